"""The built-in sim's demonstrations read back through the LIBERO data config unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from sagrflow.core import batch as keys
from sagrflow.data.mixtures import MixtureDataset
from sagrflow.sim.generate import GenerateConfig, generate


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    generate("all", root, GenerateConfig(episodes=3, image_size=64, codec="h264"), show_progress=False)
    return root


def test_sim_all_round_trip_with_libero_franka(sim_root):
    mix = MixtureDataset("sim_all", sim_root, include_state=True, image_size=(64, 64))
    assert [d.reader.meta.robot_type for d in mix.datasets] == ["libero_franka"] * 4
    for ds in mix.datasets:
        emb = ds.embodiment
        assert emb.observation_indices == (0, 7) and emb.k == 7 and emb.horizon == 8
        lengths = [e.length for e in ds.reader.episodes]
        valid = [ds.sample(*ds.locate(i))[keys.VALID_TK] for i in range(len(ds))]
        # every base step visited: the ratio is exactly what the episode lengths imply
        assert np.mean(valid) == pytest.approx(sum(max(T - 7, 0) for T in lengths) / sum(lengths))
        assert 0.5 < np.mean(valid) < 1.0
        s = ds.sample(0, 0)
        assert len(s[keys.IMAGE_T]) == 2 and s[keys.IMAGE_T][0].shape == (3, 64, 64)
        assert s[keys.ACTION].shape == (8, 7) and s[keys.STATE_T].shape == (8,)
        assert s[keys.LANG] and isinstance(s[keys.LANG], str)
        # state_tk is the state 7 steps later, after the normalizer's inverse
        state_norm, _ = ds.normalizers
        raw = ds.reader.episode_column(0, "observation.state")
        np.testing.assert_allclose(state_norm.unnormalize(s[keys.STATE_TK].numpy()), raw[7], atol=1e-5)
