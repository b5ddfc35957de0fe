"""Weighted mixtures of datasets: named mixes, mixes declared in YAML, and the mixture dataset.

A mixture sample is drawn as: pick a dataset with probability weight / sum(weights),
then a base step uniformly among that dataset's frames. The draw for position i of
epoch e is a pure function of (seed, e, i), so any worker, any resume, any order of
access reproduces the same sample.

With `chain_length` L > 1, positions come in blocks of L that share one draw and walk
one episode in steps of k: t0, t0+k, ..., t0+(L-1)k (t0 moved back so the chain fits
the episode where it can). The t+k frame of one member is then the t frame of the
next, and the model can reuse its tokens instead of a second VLM pass. The price is
diversity: a batch of B holds B/L independent (episode, t0) draws instead of B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from sagrflow.core import batch as keys
from sagrflow.core.normalize import Normalizer
from sagrflow.data.dataset import TemporalDataset
from sagrflow.data.embodiments import embodiment_overrides, get_embodiment
from sagrflow.data.errors import DataError
from sagrflow.data.stats import merged_normalizer

LIBERO_SUITES = ("object", "goal", "spatial", "10")
SIM_FAMILIES = ("spatial", "object", "goal", "long")


@dataclass(frozen=True)
class MixtureEntry:
    path: str  # relative to data_root_dir, or absolute
    weight: float = 1.0
    robot_type: str = "libero_franka"


def _named_mixes() -> dict[str, tuple[MixtureEntry, ...]]:
    def libero(suite: str) -> MixtureEntry:
        return MixtureEntry(f"libero_{suite}_no_noops_1.0.0_lerobot", 1.0, "libero_franka")

    def sim(family: str) -> MixtureEntry:
        return MixtureEntry(f"sim_{family}", 1.0, "libero_franka")

    mixes = {"libero_all": tuple(libero(s) for s in LIBERO_SUITES)}
    mixes.update({f"libero_{s}": (libero(s),) for s in LIBERO_SUITES})
    mixes["sim_all"] = tuple(sim(f) for f in SIM_FAMILIES)
    mixes.update({f"sim_{f}": (sim(f),) for f in SIM_FAMILIES})
    return mixes


DATA_MIXES = _named_mixes()


def resolve_mix(data_mix: str | Sequence[Mapping]) -> tuple[MixtureEntry, ...]:
    """A named mix, or a list of `{path, weight, robot_type}` mappings from a YAML config."""
    if isinstance(data_mix, str):
        if data_mix not in DATA_MIXES:
            raise DataError("datasets.vla_data.data_mix", f"unknown data mix {data_mix!r}",
                            f"use one of {sorted(DATA_MIXES)} or declare a list of {{path, weight, robot_type}}")
        return DATA_MIXES[data_mix]
    entries = []
    allowed = {"path", "weight", "robot_type"}
    for i, item in enumerate(data_mix):
        where = f"datasets.vla_data.data_mix[{i}]"
        if not isinstance(item, Mapping) or "path" not in item:
            raise DataError(where, f"must be a mapping with at least 'path', got {item!r}")
        extra = set(item) - allowed
        if extra:
            raise DataError(where, f"unknown keys {sorted(extra)}", f"allowed: {sorted(allowed)}")
        weight = float(item.get("weight", 1.0))
        if not weight > 0:
            raise DataError(where, f"weight must be > 0, got {weight}")
        entries.append(MixtureEntry(str(item["path"]), weight, str(item.get("robot_type", "libero_franka"))))
    if not entries:
        raise DataError("datasets.vla_data.data_mix", "is an empty list")
    return tuple(entries)


class MixtureDataset(Dataset):
    def __init__(
        self,
        data_mix: str | Sequence[Mapping],
        data_root_dir: str | Path,
        *,
        include_state: bool = False,
        video_backend: str = "pyav",
        image_size: tuple[int, int] | None = None,
        observation_indices: tuple[int, ...] | None = None,
        temporal_delta_k: int | None = None,
        seed: int = 0,
        length: int | None = None,
        decoder_cache_size: int = 64,
        chain_length: int = 1,
    ):
        if chain_length < 1:
            raise DataError("datasets.vla_data.chain_length", f"must be >= 1, got {chain_length}")
        self.chain_length = chain_length
        self.entries = resolve_mix(data_mix)
        root = Path(data_root_dir)
        overrides = embodiment_overrides(image_size, observation_indices, temporal_delta_k)
        self.datasets: list[TemporalDataset] = []
        for entry in self.entries:
            path = Path(entry.path) if Path(entry.path).is_absolute() else root / entry.path
            embodiment = get_embodiment(entry.robot_type, **overrides)
            self.datasets.append(TemporalDataset(path, embodiment, include_state=include_state,
                                                 video_backend=video_backend, decoder_cache_size=decoder_cache_size))
        self._check_compatible()
        self.normalizers = self._share_normalizers()
        weights = np.array([e.weight for e in self.entries], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.seed = seed
        self.epoch = 0
        self._length = length if length is not None else sum(len(d) for d in self.datasets)

    def _check_compatible(self) -> None:
        first = self.datasets[0].embodiment
        for entry, ds in zip(self.entries, self.datasets, strict=True):
            e = ds.embodiment
            if (e.horizon, e.k, len(e.video_keys), e.image_size) != (first.horizon, first.k, len(first.video_keys), first.image_size):
                raise DataError(entry.path, f"robot type {e.robot_type} has horizon/k/cameras/image_size "
                                f"{(e.horizon, e.k, len(e.video_keys), e.image_size)}, the mix's first dataset has "
                                f"{(first.horizon, first.k, len(first.video_keys), first.image_size)}",
                                "one batch needs one tensor shape; split the mix or align the embodiment configs")
            if ds.action.shape[1] != self.datasets[0].action.shape[1]:
                raise DataError(entry.path, f"action dim {ds.action.shape[1]} differs from {self.datasets[0].action.shape[1]}")
            if ds.include_state and ds.state.shape[1] != self.datasets[0].state.shape[1]:
                raise DataError(entry.path, f"state dim {ds.state.shape[1]} differs from the mix's first dataset's "
                                f"{self.datasets[0].state.shape[1]}", "one batch needs one state width; split the mix "
                                "or turn datasets.vla_data.include_state off")

    def _share_normalizers(self) -> dict[str, dict[str, Normalizer]]:
        """One (state, action) normalizer per robot type, from the merged stats of its datasets."""
        out = {}
        for robot in sorted({e.robot_type for e in self.entries}):
            members = [d for e, d in zip(self.entries, self.datasets, strict=True) if e.robot_type == robot]
            stats = [d.raw_stats() for d in members]
            state_modes, action_modes = members[0].modes()
            state = merged_normalizer([s for s, _ in stats], state_modes)
            action = merged_normalizer([a for _, a in stats], action_modes)
            for d in members:
                d.set_normalizers(state, action)
            out[robot] = {"state": state, "action": action}
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._length

    def draw(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """(dataset position, base step) for position `index` of `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        chain, member = divmod(int(index), self.chain_length)
        rng = np.random.default_rng((self.seed, int(epoch), chain))
        d = int(rng.choice(len(self.datasets), p=self.probs))
        ds = self.datasets[d]
        step = int(rng.integers(len(ds)))
        if self.chain_length == 1:
            return d, step
        # the episode as a single draw picks it (by length); the chain's start uniform over the
        # steps where it fits (clamping a uniform step instead piles the draws of the last
        # (L-1)k steps onto the one chain that ends at the episode's last frame)
        episode, _ = ds.locate(step)
        length, k = ds.reader.episodes[episode].length, ds.embodiment.k
        t0 = int(rng.integers(max(1, length - (self.chain_length - 1) * k)))
        t = min(t0 + member * k, length - 1)  # an episode shorter than the chain repeats its last frame
        return d, int(ds.reader.episode_starts[episode]) + t

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """`mix[i]` draws position i of the current epoch; `mix[(epoch, i)]` names the epoch."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)}")
        d, step = self.draw(index, epoch)
        sample = self.datasets[d][step]
        sample[keys.DATASET_INDEX] = d
        return sample
