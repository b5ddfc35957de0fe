"""A tiny real SA-GR checkpoint (built offline once per session) and fake suites for the harness."""

from __future__ import annotations

import numpy as np
import pytest

from sagrflow.core.normalize import FeatureStats, Normalizer
from sagrflow.eval.suites import TaskSpec

H, A, S, IMG = 8, 7, 8, 56


def action_normalizer() -> Normalizer:
    lo, hi = np.full(A, -0.5), np.full(A, 1.5)  # un-normalizing visibly changes the numbers
    stats = FeatureStats(min=lo, max=hi, mean=(lo + hi) / 2, std=np.ones(A), q01=lo, q99=hi, count=10)
    return Normalizer(stats, ["min_max"] * A)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from sagrflow.model.config import FrameworkConfig
    from sagrflow.model.policy import SAGRPolicy
    from sagrflow.model.tiny import make_tiny

    root = tmp_path_factory.mktemp("eval_tiny")
    backbone = make_tiny("qwen2_5_vl", root / "backbone")
    config = FrameworkConfig.from_dict({
        "backbone": {"path": str(backbone), "image_size": [IMG, IMG], "cameras": 2},  # as a trainer records it
        "action_model": dict(action_horizon=H, action_dim=A, state_dim=S, repeated_diffusion_steps=1, dit_width=32,
                             dit_heads=2, num_task_tokens=4, world_depth=1, num_inference_timesteps=3,
                             temporal_delta_k=4),
    })
    torch.manual_seed(0)
    return SAGRPolicy.from_config(config, action_normalizer()).save(root / "policy")


class LogEnv:
    """A stand-in environment: logs every action; succeeds when action[0] reaches `goal`."""

    def __init__(self, task: str, max_steps: int, goal: float | None = None):
        self.instruction, self.max_steps, self.goal = f"do {task}", max_steps, goal
        self.actions: list[np.ndarray] = []
        self.steps = 0
        self.closed = False

    def _obs(self) -> dict:
        img = np.full((16, 16, 3), self.steps % 256, np.uint8)
        return {"image": img, "wrist_image": img, "state": np.zeros(S, np.float32)}

    def reset(self, seed=None):
        self.steps = 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        self.steps += 1
        success = self.goal is not None and float(action[0]) >= self.goal
        truncated = not success and self.steps >= self.max_steps
        return self._obs(), float(success), success, truncated, {"success": success}

    def close(self):
        self.closed = True


class LogSuite:
    name = "log"
    first_seed = 0

    def __init__(self, n_tasks: int = 2, max_steps: int = 10, goal: float | None = None):
        self.specs = [TaskSpec(f"t{i}", f"do t{i}", max_steps) for i in range(n_tasks)]
        self.goal = goal
        self.envs: list[LogEnv] = []

    def tasks(self):
        return self.specs

    def make_env(self, task, max_steps=None):
        spec = next(s for s in self.specs if s.name == task)
        env = LogEnv(task, max_steps or spec.max_steps, self.goal)
        self.envs.append(env)
        return env
