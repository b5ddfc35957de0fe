"""Synthetic LIBERO-shaped datasets whose pixels carry their own (episode, frame) id.

Tests and benchmarks use these to check that the frame decoded for t+k is exactly
the one written at t+k, through lossy video too: the ids are written as large
black/white blocks that survive h264 and AV1 compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagrflow.data.embodiments import LIBERO_MODALITY
from sagrflow.data.lerobot.writer import DatasetSpec, Episode, LeRobotWriter

_BITS = 10  # ids up to 1023
_GRID = 8  # blocks per side


def encode_id_image(episode: int, frame: int, camera: int, size: tuple[int, int]) -> np.ndarray:  # -> (h, w, 3) uint8
    """Row 0 of an 8x8 block grid holds the frame id, row 1 the episode id, row 2 the camera."""
    h, w = size
    bh, bw = h // _GRID, w // _GRID
    img = np.full((h, w, 3), 128, dtype=np.uint8)
    for row, value in enumerate((frame, episode, camera)):
        for bit in range(_BITS):
            r, c = divmod(row * _BITS + bit, _GRID)
            img[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255 if (value >> bit) & 1 else 0
    return img


def decode_id_image(img: np.ndarray) -> tuple[int, int, int]:
    """(episode, frame, camera) from an image made by `encode_id_image`; takes HWC or CHW."""
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = np.moveaxis(img, 0, -1)
    h, w = img.shape[:2]
    bh, bw = h // _GRID, w // _GRID
    values = []
    for row in range(3):
        v = 0
        for bit in range(_BITS):
            r, c = divmod(row * _BITS + bit, _GRID)
            block = img[r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
            v |= int(block.mean() > 127) << bit
        values.append(v)
    frame, episode, camera = values
    return episode, frame, camera


def libero_spec(**overrides) -> DatasetSpec:
    """A LIBERO-layout spec (2 cameras, 8-d state, 7-d action, modality.json)."""
    base = dict(
        fps=10,
        camera_keys=("observation.images.image", "observation.images.wrist_image"),
        image_size=(64, 64),
        state_names=("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"),
        action_names=("x", "y", "z", "roll", "pitch", "yaw", "gripper"),
        robot_type="libero_franka",
        modality=LIBERO_MODALITY,
    )
    base.update(overrides)
    return DatasetSpec(**base)


def synthetic_episode(episode: int, length: int, spec: DatasetSpec, rng: np.random.Generator) -> Episode:
    """State/action rows encode (episode, frame) too: action[:, 0] = frame, action[:, 1] = episode."""
    frames = np.arange(length, dtype=np.float32)
    action = rng.uniform(-1, 1, (length, len(spec.action_names))).astype(np.float32)
    action[:, 0] = frames
    action[:, 1] = episode
    state = rng.normal(size=(length, len(spec.state_names))).astype(np.float32)
    state[:, 0] = frames
    state[:, 1] = episode
    images = {
        key: np.stack([encode_id_image(episode, f, cam, spec.image_size) for f in range(length)])
        for cam, key in enumerate(spec.camera_keys)
    }
    return Episode(task=f"task {episode % 3}", state=state, action=action, images=images)


def write_synthetic(root: str | Path, lengths: list[int], seed: int = 0, **spec_overrides) -> Path:
    spec = libero_spec(**spec_overrides)
    rng = np.random.default_rng(seed)
    with LeRobotWriter(root, spec, overwrite=True) as writer:
        for i, length in enumerate(lengths):
            writer.add_episode(synthetic_episode(i, length, spec, rng))
    return Path(root)
