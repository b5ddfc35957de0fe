"""The temporal contract of DESIGN.md section 2, checked frame by frame through every format."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sagrflow.core import batch as keys
from sagrflow.data.dataset import TemporalDataset
from sagrflow.data.synthetic import decode_id_image

from .conftest import FORMATS, LENGTHS, format_id

K, H = 7, 8


def _all_samples(ds: TemporalDataset):
    for i in range(len(ds)):
        ep, t = ds.locate(i)
        yield ep, t, ds.sample(ep, t)


@pytest.mark.parametrize("fmt", FORMATS, ids=format_id)
def test_decoded_frames_are_exactly_t_and_t_plus_k(dataset_root, embodiment, fmt):
    ds = TemporalDataset(dataset_root(*fmt), embodiment)
    for ep, t, s in _all_samples(ds):
        T = LENGTHS[ep]
        for cam in range(2):
            assert decode_id_image(s[keys.IMAGE_T][cam].numpy()) == (ep, t, cam)
            # past the end, image_tk holds the episode's last frame (clamped), never another episode's
            assert decode_id_image(s[keys.IMAGE_TK][cam].numpy()) == (ep, min(t + K, T - 1), cam)
            assert s[keys.IMAGE][cam] is s[keys.IMAGE_T][cam]
            assert s[keys.IMAGE_T][cam].dtype == torch.uint8
            assert s[keys.IMAGE_T][cam].shape == (3, 64, 64)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f[1]], ids=format_id)
def test_torchcodec_backend_decodes_the_same_frames(dataset_root, embodiment, fmt):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec (and ffmpeg's libraries) not installed")
    ds = TemporalDataset(dataset_root(*fmt), embodiment, video_backend="torchcodec")
    for ep, t, s in _all_samples(ds):
        assert decode_id_image(s[keys.IMAGE_T][0].numpy()) == (ep, t, 0)
        assert decode_id_image(s[keys.IMAGE_TK][1].numpy()) == (ep, min(t + K, LENGTHS[ep] - 1), 1)


def test_validity_rule_at_every_boundary(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v2.1", None), embodiment)
    seen = {"t+k=T-1": 0, "t+k=T": 0, "t+k>T": 0}
    for ep, t, s in _all_samples(ds):
        T = LENGTHS[ep]
        assert s[keys.TEMPORAL_DELTA_K] == K
        assert s[keys.VALID_TK] == (1.0 if t + K < T else 0.0)
        if t + K == T - 1:
            seen["t+k=T-1"] += 1
            assert s[keys.VALID_TK] == 1.0
        elif t + K == T:
            seen["t+k=T"] += 1
            assert s[keys.VALID_TK] == 0.0
        elif t + K > T:
            seen["t+k>T"] += 1
    assert all(n > 0 for n in seen.values()), seen


def test_episodes_not_longer_than_k_give_only_invalid_samples(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v2.1", "h264"), embodiment)
    for ep, _, s in _all_samples(ds):
        if LENGTHS[ep] <= K:
            assert s[keys.VALID_TK] == 0.0


def test_valid_ratio_matches_episode_lengths(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v3.0", "h264"), embodiment)
    ratio = np.mean([s[keys.VALID_TK] for _, _, s in _all_samples(ds)])
    expected = sum(max(T - K, 0) for T in LENGTHS) / sum(LENGTHS)
    assert ratio == pytest.approx(expected)
    assert ds.expected_valid_ratio() == pytest.approx(expected)


def test_k_not_in_observation_indices_makes_every_pair_invalid(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v2.1", None), replace(embodiment, observation_indices=(0,)))
    assert all(s[keys.VALID_TK] == 0.0 for _, _, s in _all_samples(ds))
    # shapes never change: image_tk still holds a (clamped) frame
    s = ds.sample(0, 0)
    assert decode_id_image(s[keys.IMAGE_TK][0].numpy()) == (0, K, 0)


def test_action_chunk_padding_and_mask(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v3.0", None), replace(embodiment, normalization={}))  # raw actions
    for ep, t, s in _all_samples(ds):
        T = LENGTHS[ep]
        action, mask = s[keys.ACTION].numpy(), s[keys.ACTION_MASK].numpy()
        assert action.shape == (H, 7) and mask.shape == (H,)
        frames = np.minimum(t + np.arange(H), T - 1)
        np.testing.assert_array_equal(action[:, 0], frames)  # column 0 encodes the frame index
        np.testing.assert_array_equal(action[:, 1], ep)  # column 1 the episode: never another episode
        np.testing.assert_array_equal(mask, (t + np.arange(H) < T).astype(np.float32))


def test_state_t_and_tk(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v2.1", "h264"), replace(embodiment, normalization={}), include_state=True)
    for ep, t, s in _all_samples(ds):
        T = LENGTHS[ep]
        assert s[keys.STATE_T][0] == t and s[keys.STATE_TK][0] == min(t + K, T - 1)
        assert s[keys.STATE_T][1] == ep
        assert s[keys.STATE] is s[keys.STATE_T]
    assert keys.STATE_T not in TemporalDataset(dataset_root("v2.1", "h264"), embodiment)[0]


def test_actions_are_normalized_with_the_configs_modes(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v2.1", None), embodiment)
    a = torch.stack([s[keys.ACTION] for _, _, s in _all_samples(ds)]).numpy()
    assert a[..., :6].min() >= -1.0 and a[..., :6].max() <= 1.0  # min_max on the six arm dims
    assert a[..., :6].min() == -1.0 and a[..., :6].max() == 1.0
    raw = TemporalDataset(dataset_root("v2.1", None), replace(embodiment, normalization={}))
    b = torch.stack([s[keys.ACTION] for _, _, s in _all_samples(raw)]).numpy()
    np.testing.assert_array_equal(a[..., 6], b[..., 6])  # gripper: mode none


def test_instruction_comes_from_the_frames_task(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root("v3.0", "av1"), embodiment)
    for ep, _, s in _all_samples(ds):
        assert s[keys.LANG] == f"task {ep % 3}"


def test_openpi_libero_layout_without_modality_json(tmp_path, embodiment):
    """openpi's conversion: PNG in parquet, keys image/wrist_image/state/actions, no modality.json."""
    from sagrflow.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "openpi", [10, 4], video_codec=None, version="v2.1", modality=None,
                           camera_keys=("image", "wrist_image"), state_key="state", action_key="actions")
    assert not (root / "meta" / "modality.json").exists()
    ds = TemporalDataset(root, replace(embodiment, normalization={}), include_state=True)
    assert ds.cameras == ["image", "wrist_image"]
    s = ds.sample(0, 2)
    assert decode_id_image(s[keys.IMAGE_TK][1].numpy()) == (0, 9, 1)
    assert s[keys.ACTION][0, 0] == 2 and s[keys.STATE_TK][0] == 9


def test_unknown_layout_without_modality_json_is_an_error(tmp_path, embodiment):
    from sagrflow.data.errors import DataError
    from sagrflow.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "odd", [5], video_codec=None, modality=None, camera_keys=("cam0", "cam1"))
    with pytest.raises(DataError, match="modality.json: is missing, and no default layout of robot type 'libero_franka'"):
        TemporalDataset(root, embodiment)
