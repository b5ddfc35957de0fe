from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sagrflow.core.normalize import MODES, FeatureStats, Normalizer, compute_stats, merge_stats


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, 3.0, -1.0, 10.0]
    x[:, 3] = 7.0  # a constant dimension
    return x


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_inside_the_range(data, mode):
    stats = compute_stats(data)
    norm = Normalizer(stats, [mode] * 4)
    inside = data[(data >= stats.q01).all(1) & (data <= stats.q99).all(1)] if mode == "q99" else data
    y = norm.normalize(inside)
    np.testing.assert_allclose(norm.unnormalize(y), inside, rtol=1e-6, atol=1e-6)
    # torch takes the same path
    yt = norm.normalize(torch.as_tensor(inside, dtype=torch.float64))
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(norm.unnormalize(yt).numpy(), inside, rtol=1e-6, atol=1e-6)


def test_ranges_map_to_minus_one_one_and_clip(data):
    stats = compute_stats(data)
    y = Normalizer(stats, ["min_max"] * 4).normalize(data)
    assert y[:, :3].min() == pytest.approx(-1.0) and y[:, :3].max() == pytest.approx(1.0)
    q = Normalizer(stats, ["q99"] * 4).normalize(data)
    assert q.min() >= -1.0 and q.max() <= 1.0  # values beyond q01/q99 are clipped
    m = Normalizer(stats, ["mean_std"] * 4).normalize(data)
    np.testing.assert_allclose(m[:, :3].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(m[:, :3].std(0), 1.0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_constant_dimension_is_finite_and_restored(data, mode):
    norm = Normalizer(compute_stats(data), [mode] * 4)
    y = norm.normalize(data)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(norm.unnormalize(y)[:, 3], 7.0)


def test_none_is_identity(data):
    norm = Normalizer(compute_stats(data), ["none"] * 4)
    np.testing.assert_array_equal(norm.normalize(data), data)


def test_merge_is_exact_for_moments_and_extremes(data):
    a, b = data[:120], data[120:]
    merged = merge_stats([compute_stats(a), compute_stats(b)])
    whole = compute_stats(data)
    for name in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-9, atol=1e-12)
    assert merged.count == 500
    # quantiles are a count-weighted approximation; close for parts from one distribution
    np.testing.assert_allclose(merged.q99[:3], whole.q99[:3], rtol=0.1)


def test_stats_and_normalizer_serialize(data):
    norm = Normalizer(compute_stats(data), ["min_max", "q99", "mean_std", "none"])
    restored = Normalizer.from_json(json.loads(json.dumps(norm.to_json())))
    np.testing.assert_array_equal(restored.normalize(data), norm.normalize(data))
    assert restored.modes == norm.modes


def test_bad_input_is_rejected(data):
    stats = compute_stats(data)
    with pytest.raises(ValueError, match="unknown normalization mode"):
        Normalizer(stats, ["minmax"] * 4)
    with pytest.raises(ValueError, match="3 normalization modes for a 4-dim"):
        Normalizer(stats, ["none"] * 3)
    with pytest.raises(ValueError, match="last dim 4"):
        Normalizer(stats, ["none"] * 4).normalize(np.zeros((2, 3)))
    with pytest.raises(KeyError, match="q01"):
        FeatureStats.from_json({"min": [0], "max": [1], "mean": [0], "std": [1]})
    with pytest.raises(ValueError, match="different widths"):
        merge_stats([stats, compute_stats(data[:, :2])])
