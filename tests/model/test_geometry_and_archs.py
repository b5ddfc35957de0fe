"""Geometric branch (scale calibration, gated start, MapAnything hint) and the policy on every tiny arch."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

from sagrflow.model.geometry import MAPANYTHING_HINT, MapEncoder, build_geometry_encoder, scale_normalize

from .conftest import IMG, B, C, H, build_policy, make_batch, observation, seeded_forward

TERMS = ("loss_fm", "loss_dyn", "loss_geo", "loss_reg")


def with_depth(batch, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth_t = (torch.rand(B, C, 1, IMG, IMG, generator=g) + 0.5) * scale
    depth_tk = (torch.rand(B, C, 1, IMG, IMG, generator=g) + 0.5) * scale
    return dataclasses.replace(batch, depth_t=depth_t, depth_tk=depth_tk)


def test_scale_normalize_is_scale_invariant_and_finite():
    d = torch.rand(2, 1, 16, 16) + 0.1
    d[0, 0, 0, 0] = float("nan")
    d[1, 0, 1, 1] = float("inf")
    a, b = scale_normalize(d), scale_normalize(d * 1000.0)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    zeros = scale_normalize(torch.zeros(1, 3, 8, 8))
    assert torch.equal(zeros, torch.zeros(1, 3, 8, 8))


def test_geometric_branch_starts_almost_off_and_finite(tiny_dir):
    batch = make_batch()
    base = build_policy(tiny_dir)
    geo = build_policy(tiny_dir, use_geometric_branch=True, geometry_encoder="depth")
    missing, unexpected = geo.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("geometry.", "anchor.geo_")) for k in missing)
    a = seeded_forward(base, batch)
    b = seeded_forward(geo, with_depth(batch, scale=1000.0))  # millimetres: calibration must absorb it
    for k in TERMS:
        assert torch.isfinite(b[k]).all(), k
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    assert (b["absmax/task_tokens"] - a["absmax/task_tokens"]).abs() < 1e-3
    # the branch is live: the gate and bias receive gradient
    total = sum(b[k].mean() for k in TERMS)
    total.backward()
    assert geo.anchor.geo_gate.grad is not None and geo.anchor.geo_gate.grad.abs() > 0


def test_geometric_branch_without_geometry_says_what_to_do(tiny_dir):
    geo = build_policy(tiny_dir, use_geometric_branch=True)
    with pytest.raises(ValueError, match="use_geometric_branch false"):
        geo(make_batch())


def test_pointmap_encoder_tokens():
    enc = MapEncoder(3, 16)
    tokens = enc(None, torch.randn(2, C, 3, 40, 40))
    assert tokens.shape == (2, C * 16, 16)


def test_mapanything_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mapanything", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install"):
        build_geometry_encoder("mapanything", 16, "/some/dir")
    assert "map-anything" in MAPANYTHING_HINT


@pytest.mark.parametrize("arch", ["qwen3_vl", "llava"])
def test_policy_on_other_archs(tiny_dirs, arch, tmp_path):
    policy = build_policy(tiny_dirs[arch])
    out = seeded_forward(policy, make_batch())
    assert all(out[k].shape == (B,) and torch.isfinite(out[k]).all() for k in TERMS)
    policy.eval()
    pred = policy.predict_action([observation(0)], generator=torch.Generator().manual_seed(0))
    assert pred["actions"].shape == (1, H, 7) and np.isfinite(pred["actions"]).all()
    policy.save(tmp_path / arch)
    from sagrflow.model.policy import SAGRPolicy

    again = SAGRPolicy.load(tmp_path / arch).eval()
    pred2 = again.predict_action([observation(0)], generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(pred["actions"], pred2["actions"])


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_every_trainable_parameter_gets_a_gradient(tiny_dirs, arch):
    """DDP without find_unused_parameters needs it; LLaVA's vision layers above the feature layer are frozen."""
    from sagrflow.model.losses import reduce_losses

    policy = build_policy(tiny_dirs[arch])
    total, _ = reduce_losses(seeded_forward(policy, make_batch()), policy.config.action_model.loss_weights)
    total.backward()
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert all(".vision_tower." in n for n in frozen) and (arch == "llava") == bool(frozen)
