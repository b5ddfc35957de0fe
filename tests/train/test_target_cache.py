"""The trainer attaches the frozen-VLM target cache exactly when the whole backbone is frozen."""

from __future__ import annotations

from sagrflow.train import metrics as m
from sagrflow.train.trainer import Trainer


def test_cache_only_with_a_frozen_backbone_and_it_serves_targets(make_config):
    trained = Trainer(make_config(**{"trainer.max_train_steps": 1}))
    assert trained.policy.target_cache is None
    off = Trainer(make_config(**{"trainer.freeze_modules": ["backbone"], "trainer.target_cache_mb": 0,
                                 "trainer.run_name": "off"}))
    assert off.policy.target_cache is None
    cfg = make_config(**{"trainer.freeze_modules": ["backbone"], "trainer.max_train_steps": 12,
                         "trainer.run_name": "frozen"})
    trainer = Trainer(cfg)
    cache = trainer.policy.target_cache
    assert cache is not None and cache.max_bytes == cfg.trainer.target_cache_mb << 20
    trainer.fit()
    rows = m.read_metrics(cfg.run_dir / "metrics.jsonl")
    # the tiny mix holds few frames: after a few steps some t+k frames were seen before
    assert sum(r["perf/target_cache_ratio"] for r in rows) > 0 and len(cache) > 0
    assert all(0 <= r["perf/target_pass_ratio"] + r["perf/target_cache_ratio"] + r["perf/target_reuse_ratio"]
               <= r["debug/temporal/valid_tk_ratio"] + 1e-6 for r in rows)
