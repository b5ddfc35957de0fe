"""A tiny sim_all mix and a tiny Qwen2.5-VL backbone, written once per session; a config builder."""

from __future__ import annotations

import pytest

from sagrflow.data.synthetic import write_synthetic
from sagrflow.model.tiny import make_tiny
from sagrflow.train.config import load_config

SIM_NAMES = ("sim_spatial", "sim_object", "sim_goal", "sim_long")
# k = 7: lengths 14 and 9 have valid t+k targets for their first 7 and 2 steps, 5 has none,
# so micro-batches differ in how many valid samples they hold
LENGTHS = [14, 9, 5]
IMG = 56


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_mix")
    for i, name in enumerate(SIM_NAMES):
        write_synthetic(root / name, LENGTHS, seed=i, video_codec=None, image_size=(IMG, IMG))
    return root


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    return make_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", hidden_size=32, num_layers=2)


@pytest.fixture
def make_config(sim_root, backbone_dir, tmp_path):
    """make_config(**{"trainer.max_train_steps": 4, ...}) -> RunConfig writing under tmp_path."""

    def make(**overrides):
        base = {
            "datasets.vla_data.data_root_dir": str(sim_root),
            "datasets.vla_data.per_device_batch_size": 4,
            "datasets.vla_data.num_workers": 0,
            "framework.backbone.path": str(backbone_dir),
            "framework.action_model.dit_width": 32,
            "framework.action_model.dit_heads": 2,
            "trainer.output_dir": str(tmp_path / "runs"),
            "trainer.run_name": "test",
            "trainer.logger": "none",
            "trainer.log_interval": 1,
            "trainer.max_train_steps": 4,
            "trainer.save_interval": 0,
            "trainer.sagr_phase_a_steps": 0,
            "trainer.sagr_phase_b_ramp_steps": 0,
            "trainer.warmup_steps": 1,
        }
        base.update(overrides)
        return load_config(None, base)

    return make
