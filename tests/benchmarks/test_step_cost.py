"""benchmarks/step_cost.py on the tiny config: its counts behave as the SA-GR step's design says."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
step_cost = importlib.import_module("step_cost")


def test_step_counts_follow_the_target_pass_and_the_chains(tmp_path):
    rows = {(r["mode"], r["chain"]): r for r in step_cost.run_config("tiny", tmp_path, 8, [1, 2, 4])}
    fm = rows["fm_only", 1]
    for target_pass in ("sagr_separate", "sagr_fused"):
        flops = [rows[target_pass, c]["flops"] for c in (1, 2, 4)]
        assert fm["flops"] < flops[2] < flops[1] < flops[0]  # longer chains: fewer t+k rows through the VLM
        # the VLM calls are the same whatever the chain: only their row counts change
        assert len({rows[target_pass, c]["ops"] for c in (1, 2, 4)}) == 1
    for c in (1, 2, 4):
        separate, fused = rows["sagr_separate", c], rows["sagr_fused", c]
        assert fused["flops"] > separate["flops"]  # backward runs over the appended rows too
        assert fused["ops_fwd"] < separate["ops_fwd"]  # ... but the second VLM call is gone
    assert rows["sagr_fused", 4]["ops"] / fm["ops"] == pytest.approx(rows["sagr_fused", 4]["ops_ratio"])


def test_attention_counts_one_operator_each_way_in_its_own_phase(tmp_path):
    policy = step_cost.build_shapes("tiny", tmp_path)
    by_op = step_cost.count_step(policy, 4, False, 2, "fused")["by_op"]
    forward, backward = by_op["forward"], by_op["backward"]
    calls = forward["aten.scaled_dot_product_attention"]
    assert calls > 0 and backward["aten.scaled_dot_product_attention_backward"] == calls
    assert "aten.scaled_dot_product_attention_backward" not in forward
    # nothing of attention's math decomposition is counted, either way: its softmax, and the batched
    # matmuls, at least two per call in backward (the observation summary's own einsum has a few)
    assert "aten._safe_softmax" not in forward
    assert backward.get("aten.bmm", 0) < calls


def test_graphed_modules_count_one_replay_each_way_per_call(tmp_path):
    policy = step_cost.build_shapes("tiny", tmp_path)
    eager = step_cost.count_step(policy, 4, False, 2, "fused")
    two = step_cost.count_step(policy, 4, False, 2, "fused", ("world", "drift"))
    three = step_cost.count_step(policy, 4, False, 2, "fused", ("anchor", "world", "drift"))
    replay = step_cost.GRAPH_REPLAY
    # the world predictor and the drift run once each per step (teacher actions), the anchor once
    assert (two["by_op"]["forward"][replay], two["by_op"]["backward"][replay]) == (2, 2)
    assert (three["by_op"]["forward"][replay], three["by_op"]["backward"][replay]) == (3, 3)
    assert three["ops_fwd"] < two["ops_fwd"] < eager["ops_fwd"] and three["ops_bwd"] < two["ops_bwd"] < eager["ops_bwd"]
    assert two["flops"] == eager["flops"]  # a graph launches the same kernels
    fm = step_cost.count_step(policy, 4, True, 1, "separate", ("world", "drift"))
    assert replay not in fm["by_op"]["forward"]  # fm-only never calls them
    norms = "aten.native_layer_norm"  # the world predictor's own layer norms went into its graph
    assert two["by_op"]["forward"][norms] < eager["by_op"]["forward"][norms]
