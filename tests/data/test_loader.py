from __future__ import annotations

import itertools

import pytest
import torch

from sagrflow.data.config import VlaDataConfig
from sagrflow.data.loader import TemporalLoader, build_dataset


@pytest.fixture
def cfg(dataset_root):
    mix = [{"path": str(dataset_root("v2.1", None))}, {"path": str(dataset_root("v3.0", "h264"))}]
    return VlaDataConfig(data_root_dir="/", data_mix=mix, per_device_batch_size=4, image_size=(32, 32), num_workers=0)


def _take(loader, n):
    return [(b.dataset_index.tolist(), b.frame_index.tolist(), b.episode_index.tolist()) for b in itertools.islice(loader, n)]


def test_loader_runs_across_epochs_and_resumes_exactly(cfg):
    ds = build_dataset(cfg)
    loader = TemporalLoader(ds, cfg)
    assert loader.batches_per_epoch == len(ds) // 4
    full = _take(loader, loader.batches_per_epoch + 5)  # crosses into epoch 1
    assert loader.position.epoch == 1 and loader.position.batch == 5
    assert full[:5] != full[loader.batches_per_epoch : loader.batches_per_epoch + 5]  # a new epoch redraws

    first = TemporalLoader(ds, cfg)
    head = _take(first, 7)
    state = first.position.state_dict()
    resumed = TemporalLoader(build_dataset(cfg), cfg)
    resumed.load_state_dict(state)
    assert head + _take(resumed, len(full) - 7) == full


def test_ranks_take_disjoint_positions(cfg):
    ds = build_dataset(cfg)
    a = TemporalLoader(ds, cfg, rank=0, world_size=2)
    b = TemporalLoader(ds, cfg, rank=1, world_size=2)
    assert a.batches_per_epoch == len(ds) // 2 // 4
    sa = [list(zip(*t, strict=True)) for t in _take(a, 3)]
    sb = [list(zip(*t, strict=True)) for t in _take(b, 3)]
    assert sa != sb


def test_workers_and_main_process_give_identical_batches(cfg):
    from dataclasses import replace

    ds = build_dataset(cfg)
    one = list(itertools.islice(TemporalLoader(ds, cfg), 4))
    two = list(itertools.islice(TemporalLoader(ds, replace(cfg, num_workers=2)), 4))
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x.image_t, y.image_t) and torch.equal(x.image_tk, y.image_tk) and torch.equal(x.action, y.action)


def test_too_small_mix_is_an_error(cfg):
    from dataclasses import replace

    big = replace(cfg, per_device_batch_size=10_000)
    with pytest.raises(ValueError, match="fewer than one batch"):
        TemporalLoader(build_dataset(big), big)


@pytest.mark.parametrize("world_size", [1, 2])
def test_chains_pair_t_plus_k_with_a_t_in_the_same_batch(cfg, world_size):
    from dataclasses import replace

    chained = replace(cfg, chain_length=2, per_device_batch_size=4)
    ds = build_dataset(chained)
    seen = reused = 0
    for rank in range(world_size):
        for batch in itertools.islice(TemporalLoader(ds, chained, rank=rank, world_size=world_size), 10):
            for i, j in enumerate(batch.tk_index.tolist()):
                seen += int(batch.valid_tk[i])
                if j >= 0:
                    reused += 1
                    assert batch.valid_tk[i] == 1
                    assert batch.episode_index[j] == batch.episode_index[i]
                    assert batch.frame_index[j] == batch.frame_index[i] + 7
                    assert torch.equal(batch.image_tk[i], batch.image_t[j])  # identical pixels: exact reuse
    # every chain's first member is valid in the 12- and 20-frame episodes
    assert reused > 0.3 * seen


def test_chain_length_must_divide_the_batch_and_k_be_positive():
    from sagrflow.core.config import ConfigError

    with pytest.raises(ConfigError, match="chain_length=3 must be >= 1 and divide per_device_batch_size=4"):
        VlaDataConfig(per_device_batch_size=4, chain_length=3)
    with pytest.raises(ConfigError, match="temporal_delta_k must be >= 1 or null, got 0"):
        VlaDataConfig(temporal_delta_k=0)


def test_tk_index_pairs_are_exact_even_without_chains(cfg):
    batch = next(iter(TemporalLoader(build_dataset(cfg), cfg)))
    for i, j in enumerate(batch.tk_index.tolist()):
        if j >= 0:  # a coincidental pair is still an exact pair
            assert torch.equal(batch.image_tk[i], batch.image_t[j])


def test_iterating_does_not_consume_the_global_torch_rng(cfg):
    loader = TemporalLoader(build_dataset(cfg), cfg)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _take(loader, loader.batches_per_epoch + 2)  # starts two epochs
    assert torch.equal(torch.rand(3), expected)


def test_tk_index_pairs_only_samples_under_the_same_instruction():
    from sagrflow.core import batch as keys
    from sagrflow.data.collate import tk_index

    def sample(frame: int, lang: str) -> dict:
        return {keys.EPISODE_INDEX: 0, keys.FRAME_INDEX: frame, keys.TEMPORAL_DELTA_K: 7, keys.VALID_TK: 1.0,
                keys.LANG: lang}

    # frame 7 is frame 0's t+k; where the task changes between them, the target pass (the t+k frame
    # under the instruction at t) is not what the frame-7 sample encoded
    assert tk_index([sample(0, "open the drawer"), sample(7, "open the drawer")]).tolist() == [1, -1]
    assert tk_index([sample(0, "open the drawer"), sample(7, "put the bowl in")]).tolist() == [-1, -1]
