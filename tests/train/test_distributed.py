"""Two CPU processes under `accelerate launch` (DDP over gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sagrflow.train.metrics import read_metrics
from sagrflow.train.trainer import Trainer

from .test_trainer import _deterministic_noise

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(make_config, tmp_path, steps: dict) -> tuple[dict, dict]:
    """Train under `accelerate launch` on 2 CPU processes -> each rank's saved weights and state."""
    cfg = make_config(**steps)
    overrides = {
        "datasets.vla_data.data_root_dir": cfg.data.data_root_dir, "datasets.vla_data.per_device_batch_size": 4,
        "datasets.vla_data.num_workers": 0, "framework.backbone.path": cfg.framework.backbone.path,
        "framework.action_model.dit_width": 32, "framework.action_model.dit_heads": 2,
        "trainer.output_dir": cfg.trainer.output_dir, "trainer.logger": "none", "trainer.log_interval": 1,
        "trainer.sagr_phase_a_steps": 0, "trainer.sagr_phase_b_ramp_steps": 0, "trainer.warmup_steps": 1, **steps,
    }
    # ACCELERATE_USE_CPU with the torchrun launcher gives MULTI_CPU over gloo (--cpu alone wants mpirun)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(WORKER), json.dumps(overrides), str(tmp_path),
           "--deterministic-noise"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))


def test_two_process_run_keeps_ranks_identical_and_equals_one_big_batch(make_config, tmp_path, monkeypatch):
    steps = {"trainer.max_train_steps": 2, "trainer.save_interval": 2, "trainer.run_name": "ddp"}
    cfg = make_config(**steps)
    r0, r1 = _launch(make_config, tmp_path, steps)
    assert r0["world_size"] == r1["world_size"] == 2 and "MULTI_CPU" in r0["distributed_type"]
    assert r0["position"] == r1["position"] == {"epoch": 0, "batch": 2}
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name
    assert (Path(cfg.trainer.output_dir) / "ddp" / "checkpoints" / "step_0000002").is_dir()
    # rank r takes positions r, r+2, ...: together the two ranks saw the single-process batch of 8
    _deterministic_noise(monkeypatch)
    single = Trainer(make_config(**{**steps, "trainer.run_name": "single", "datasets.vla_data.per_device_batch_size": 8}))
    single.fit()
    lr = single.cfg.trainer.learning_rate["base"]
    for name, p in single.policy.named_parameters():
        torch.testing.assert_close(r0["weights"][name], p.detach(), rtol=0, atol=0.05 * lr, msg=name)


def test_frozen_vlm_target_cache_under_ddp_hits_and_learns_the_same(make_config, tmp_path, monkeypatch):
    """Each rank keeps its own cache (DDP's buffer broadcasts do not invalidate it), and the run's losses
    equal an uncached single-process run on the same 8 samples per step."""
    steps = {"trainer.max_train_steps": 6, "trainer.save_interval": 0, "trainer.run_name": "ddp_frozen",
             "trainer.freeze_modules": ["backbone"]}
    r0, r1 = _launch(make_config, tmp_path, steps)
    assert r0["cache_hits"] + r1["cache_hits"] > 0
    _deterministic_noise(monkeypatch)
    single = Trainer(make_config(**{**steps, "trainer.run_name": "single", "trainer.target_cache_mb": 0,
                                    "datasets.vla_data.per_device_batch_size": 8}))
    assert single.policy.target_cache is None
    single.fit()
    # losses, not weights: Adam turns the ~0 gradient of attention key biases into +-lr steps of noise
    runs = {name: read_metrics(Path(single.cfg.trainer.output_dir) / name / "metrics.jsonl")
            for name in ("ddp_frozen", "single")}
    for key in ("loss/fm", "loss/dyn", "loss/geo", "debug/world/token_change"):
        torch.testing.assert_close(torch.tensor([r[key] for r in runs["ddp_frozen"]]),
                                   torch.tensor([r[key] for r in runs["single"]]), rtol=1e-4, atol=1e-6, msg=key)
