"""Tiny backbones built once per session, a small policy config and a fake Batch of the real type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sagrflow.core.batch import Batch
from sagrflow.core.normalize import FeatureStats, Normalizer
from sagrflow.model.config import FrameworkConfig
from sagrflow.model.policy import SAGRPolicy
from sagrflow.model.tiny import make_tiny

B, C, H, A, S, IMG = 3, 2, 8, 7, 5, 56


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny(arch, root / arch) for arch in ("qwen2_5_vl", "qwen3_vl", "llava")}


@pytest.fixture(scope="session")
def tiny_dir(tiny_dirs):
    return tiny_dirs["qwen2_5_vl"]


def small_config(path, **action_model) -> FrameworkConfig:
    am = dict(action_horizon=H, action_dim=A, state_dim=S, repeated_diffusion_steps=2, dit_width=32,
              dit_heads=2, num_task_tokens=4, world_depth=1, num_inference_timesteps=4)
    am.update(action_model)
    return FrameworkConfig.from_dict({"backbone": {"path": str(path), "image_size": [IMG, IMG]}, "action_model": am})


def build_policy(path, seed: int = 0, action_normalizer=None, state_normalizer=None, **action_model) -> SAGRPolicy:
    torch.manual_seed(seed)
    return SAGRPolicy.from_config(small_config(path, **action_model), action_normalizer, state_normalizer)


def make_batch(b: int = B, seed: int = 0, valid=None, state: bool = True, lang=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    valid = torch.tensor([1.0, 0.0, 1.0][:b] if valid is None else valid, dtype=torch.float32)
    mask = torch.ones(b, H)
    mask[0, 5:] = 0  # sample 0 runs past its episode end
    return Batch(
        image_t=torch.randint(0, 256, (b, C, 3, IMG, IMG), generator=g, dtype=torch.uint8),
        image_tk=torch.randint(0, 256, (b, C, 3, IMG, IMG), generator=g, dtype=torch.uint8),
        valid_tk=valid,
        action=torch.randn(b, H, A, generator=g),
        action_mask=mask,
        temporal_delta_k=torch.full((b,), 7),
        dataset_index=torch.zeros(b, dtype=torch.long),
        episode_index=torch.arange(b),
        frame_index=torch.zeros(b, dtype=torch.long),
        lang=tuple(lang or ["pick up the red cup", "open the drawer", "stack"][:b]),
        state_t=torch.randn(b, S, generator=g) if state else None,
        state_tk=torch.randn(b, S, generator=g) if state else None,
    )


def normalizer(dim: int, lo: float, hi: float) -> Normalizer:
    lo_a, hi_a = np.full(dim, lo), np.full(dim, hi)
    stats = FeatureStats(min=lo_a, max=hi_a, mean=(lo_a + hi_a) / 2, std=np.ones(dim), q01=lo_a, q99=hi_a, count=10)
    return Normalizer(stats, ["min_max"] * dim)


def observation(seed: int = 0, state=None, lang: str = "pick up the red cup") -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(C)],
        "lang": lang,
        "state": rng.normal(size=S) if state is None else state,
    }


def seeded_forward(policy: SAGRPolicy, batch, seed: int = 123) -> dict:
    torch.manual_seed(seed)
    return policy(batch)
