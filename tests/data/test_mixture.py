from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sagrflow.core.batch import Batch
from sagrflow.data.collate import collate
from sagrflow.data.mixtures import DATA_MIXES, MixtureDataset, resolve_mix


@pytest.fixture
def mix(dataset_root):
    entries = [
        {"path": str(dataset_root("v2.1", None)), "weight": 1.0},
        {"path": str(dataset_root("v3.0", None)), "weight": 3.0},
    ]
    return MixtureDataset(entries, "/", image_size=(64, 64), include_state=True, seed=7, length=4000)


def test_dataset_frequencies_follow_weights(mix):
    draws = np.array([mix.draw(i)[0] for i in range(len(mix))])
    share = np.mean(draws == 1)
    # 4000 Bernoulli(0.75) draws: std 0.0068; 0.03 is > 4 sigma
    assert abs(share - 0.75) < 0.03


def test_base_steps_are_uniform_within_a_dataset(mix):
    steps = np.array([s for d, s in (mix.draw(i) for i in range(len(mix))) if d == 1])
    counts = np.bincount(steps, minlength=len(mix.datasets[1]))
    assert counts.min() > 0  # every frame of the 50-frame dataset is a base step
    expected = len(steps) / len(counts)
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_chain_starts_are_uniform_where_the_chain_fits(dataset_root):
    entries = [{"path": str(dataset_root("v3.0", None)), "weight": 1.0}]
    mix = MixtureDataset(entries, "/", image_size=(64, 64), seed=3, length=8000, chain_length=2)
    ds = mix.datasets[0]
    starts: dict[int, list[int]] = {}
    for i in range(0, len(mix), 2):
        (_, first), (_, second) = mix.draw(i), mix.draw(i + 1)
        episode, t0 = ds.locate(first)
        assert ds.locate(second) == (episode, min(t0 + 7, ds.reader.episodes[episode].length - 1))
        starts.setdefault(episode, []).append(t0)
    lengths = [e.length for e in ds.reader.episodes]
    for episode, t0s in starts.items():
        fits = max(1, lengths[episode] - 7)  # starts 0 .. T-8: the second member is at most the last frame
        counts = np.bincount(t0s, minlength=fits)
        assert len(counts) == fits  # no start past the last one that fits
        expected = len(t0s) / fits
        # clamping a uniform step gave the last start 8 of the 20-frame episode's 20 equally likely steps
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected) + 1, (episode, counts)
    # episodes are drawn by length, as single samples are
    share = np.array([len(starts.get(e, [])) for e in range(len(lengths))]) / (len(mix) // 2)
    np.testing.assert_allclose(share, np.array(lengths) / sum(lengths), atol=0.03)


def test_sampling_is_deterministic_given_seed_epoch_index(mix, dataset_root):
    first = [mix.draw(i) for i in range(50)]
    assert [mix.draw(i) for i in reversed(range(50))][::-1] == first  # order of access does not matter
    mix.set_epoch(1)
    assert [mix.draw(i) for i in range(50)] != first
    mix.set_epoch(0)
    assert [mix.draw(i) for i in range(50)] == first
    other = MixtureDataset(mix.entries and [{"path": e.path, "weight": e.weight} for e in mix.entries], "/",
                           image_size=(64, 64), seed=7, length=4000)
    assert [other.draw(i) for i in range(50)] == first


def test_one_normalizer_per_embodiment_from_merged_stats(mix):
    norms = mix.normalizers["libero_franka"]
    for ds in mix.datasets:
        assert ds.normalizers == (norms["state"], norms["action"])
    assert norms["action"].stats.count == sum(len(d) for d in mix.datasets)


def test_collate_gives_a_typed_batch(mix):
    batch = collate([mix[i] for i in range(6)])
    assert isinstance(batch, Batch)
    assert batch.image_t.shape == (6, 2, 3, 64, 64) and batch.image_t.dtype == torch.uint8
    assert batch.image_tk.shape == (6, 2, 3, 64, 64)
    assert batch.action.shape == (6, 8, 7) and batch.action_mask.shape == (6, 8)
    assert batch.state_t.shape == (6, 8) and batch.state_tk.shape == (6, 8)
    assert batch.valid_tk.shape == (6,) and len(batch.lang) == 6
    assert batch.dataset_index.tolist() == [mix.draw(i)[0] for i in range(6)]


def test_dataloader_workers_reproduce_the_same_batches(mix):
    def batches(workers):
        loader = DataLoader(mix, batch_size=8, num_workers=workers, collate_fn=collate,
                            multiprocessing_context="forkserver" if workers else None)
        return [b for _, b in zip(range(3), loader, strict=False)]

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a.image_t, b.image_t) and torch.equal(a.action, b.action)
        assert a.lang == b.lang


def test_named_mixes():
    assert [e.path for e in resolve_mix("libero_all")] == [
        f"libero_{s}_no_noops_1.0.0_lerobot" for s in ("object", "goal", "spatial", "10")
    ]
    assert all(e.weight == 1.0 and e.robot_type == "libero_franka" for e in resolve_mix("libero_all"))
    for suite in ("object", "goal", "spatial", "10"):
        assert len(DATA_MIXES[f"libero_{suite}"]) == 1
    assert [e.path for e in resolve_mix("sim_all")] == ["sim_spatial", "sim_object", "sim_goal", "sim_long"]


def test_the_data_section_can_set_k(dataset_root):
    """datasets.vla_data.temporal_delta_k: pairs k steps apart, with k among the observation indices."""
    from sagrflow.data.embodiments import embodiment_overrides

    assert embodiment_overrides(temporal_delta_k=3) == {"temporal_delta_k": 3, "observation_indices": (0, 3)}
    assert embodiment_overrides(observation_indices=[0, 7], temporal_delta_k=3)["observation_indices"] == (0, 7)
    entries = [{"path": str(dataset_root("v3.0", None)), "weight": 1.0}]
    mix = MixtureDataset(entries, "/", image_size=(64, 64), temporal_delta_k=3, length=64)
    ds = mix.datasets[0]
    assert (ds.embodiment.k, ds.embodiment.observation_indices) == (3, (0, 3))
    episode, t = ds.locate(10)
    assert ds.locate(13) == (episode, t + 3)  # inside one episode
    sample, later = ds[10], ds[13]
    assert sample["temporal_delta_k"] == 3 and sample["valid_tk"] == 1.0
    for tk, t_later in zip(sample["image_tk"], later["image_t"], strict=True):
        np.testing.assert_array_equal(np.asarray(tk), np.asarray(t_later))
