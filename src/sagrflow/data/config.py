"""`datasets.vla_data`: the data section of a training config (DESIGN.md section 6 keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sagrflow.core.config import ConfigError, from_dict
from sagrflow.data.video import BACKENDS


@dataclass(frozen=True)
class VlaDataConfig:
    data_root_dir: str = "data"
    data_mix: str | list[dict] = "sim_all"  # a named mix, or [{path, weight, robot_type}, ...]
    per_device_batch_size: int = 16
    include_state: bool = True
    video_backend: str = field(default="pyav", metadata={"choices": BACKENDS})
    image_size: tuple[int, ...] | None = None  # (h, w); None keeps each embodiment's
    observation_indices: tuple[int, ...] | None = None  # None keeps each embodiment's ([0, k] with temporal_delta_k)
    # k of the t -> t+k pairs; None keeps each embodiment's (max(action_indices) unless it sets one). Train the
    # world model for the steps a deployed policy executes between calls: its drift acts only at calls k apart
    temporal_delta_k: int | None = None
    num_workers: int = 2
    decoder_cache_size: int = 64  # open video files kept per worker (mp4s read by packet index hold none: data/packets.py)
    chain_length: int = 1  # samples per episode chain t, t+k, ... (see data/mixtures.py); 1 = independent draws
    seed: int = 0

    def __post_init__(self):
        if self.per_device_batch_size < 1:
            raise ConfigError(f"datasets.vla_data.per_device_batch_size must be >= 1, got {self.per_device_batch_size}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"datasets.vla_data.image_size must be [h, w], got {list(self.image_size)}")
        if self.chain_length < 1 or self.per_device_batch_size % self.chain_length:
            raise ConfigError(
                f"datasets.vla_data.chain_length={self.chain_length} must be >= 1 and divide "
                f"per_device_batch_size={self.per_device_batch_size}, so that no chain is split across batches"
            )
        if self.temporal_delta_k is not None and self.temporal_delta_k < 1:
            raise ConfigError(f"datasets.vla_data.temporal_delta_k must be >= 1 or null, got {self.temporal_delta_k}")
        if self.num_workers < 0:
            raise ConfigError(f"datasets.vla_data.num_workers must be >= 0, got {self.num_workers}")


def load_data_section(config_yaml: str | Path) -> VlaDataConfig:
    """Only the `datasets.vla_data` section of a YAML config, typed."""
    path = Path(config_yaml)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    section = (raw.get("datasets") or {}).get("vla_data")
    if section is None:
        raise ConfigError(f"{path}: has no datasets.vla_data section")
    return from_dict(VlaDataConfig, section, "datasets.vla_data")
