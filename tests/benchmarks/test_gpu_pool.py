"""benchmarks/gpu_pool.py: ratios are taken within each round, then pooled over the processes of a setting."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
gpu_pool = importlib.import_module("gpu_pool")


def _write(path: Path, fm: list[float], sagr: list[float], batch: int = 64) -> Path:
    result = {"config": "mid", "batch_size": batch, "compile": "none", "chain_length": 8,
              "train": {"fm_only": {"round_ms": fm}, "sagr_chain_fused": {"round_ms": sagr}}}
    path.write_text(json.dumps(result))
    return path


def test_each_round_is_divided_by_its_own_fm_only_time_and_processes_pool_by_setting(tmp_path):
    # process a: the machine slows down over the rounds, the ratio stays 1.1; process b sits at 1.3
    a = _write(tmp_path / "a.json", [100, 200, 300, 400], [110, 220, 330, 440])
    b = _write(tmp_path / "b.json", [100, 100, 100, 100], [130, 130, 130, 130])
    other = _write(tmp_path / "c.json", [100, 100], [200, 200], batch=16)
    out = gpu_pool.pooled([a, b, other])
    row = out["mid", 64, "none", 8]["sagr_chain_fused"]
    assert row["per_process"] == pytest.approx([1.1, 1.3])
    assert row["spread"] == pytest.approx(0.2)
    assert row["pooled_quartiles"] == pytest.approx([1.1, 1.2, 1.3])
    assert out["mid", 16, "none", 8]["sagr_chain_fused"]["per_process"] == pytest.approx([2.0])


def test_a_result_without_per_round_times_is_refused_with_its_path(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"config": "mid", "batch_size": 64, "compile": "none",
                               "train": {"fm_only": {"ms": 100.0, "round_ratio_quartiles": [1, 1, 1]}}}))
    with pytest.raises(SystemExit, match="old.json.*round_ms"):
        gpu_pool.pooled([old])
