"""The temporal sample of DESIGN.md section 2, cut from one LeRobot dataset.

For base step t of an episode of length T, with k = temporal_delta_k and H = horizon:
  image_t / image_tk   frames t and min(t+k, T-1) of every camera, decoded in one call per file
  valid_tk             1.0 iff k in observation_indices and t+k < T
  action, action_mask  rows t..t+H-1, the last row repeated past the end, mask 1 where t+i < T
  state_t / state_tk   with include_state, rows t and min(t+k, T-1)

Legend: T episode length, H horizon, A action dim, S state dim, C cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sagrflow.core import batch as keys
from sagrflow.core.image import to_chw_uint8
from sagrflow.core.normalize import FeatureStats, Normalizer
from sagrflow.data.embodiments import EmbodimentConfig
from sagrflow.data.errors import DataError
from sagrflow.data.lerobot.meta import validate_modality
from sagrflow.data.lerobot.reader import LeRobotReader
from sagrflow.data.stats import concat_stats, dataset_stats


@dataclass(frozen=True)
class _Slice:
    key: str  # embodiment key, e.g. "state.x"
    column: str  # parquet column, e.g. "observation.state"
    start: int
    end: int


def _resolve_slices(group: str, names: tuple[str, ...], modality: dict, default_column: str, where: Path) -> list[_Slice]:
    out = []
    table = modality.get(group) or {}
    for key in names:
        name = key.split(".", 1)[1]
        if name not in table:
            raise DataError(where, f"modality has no {group} key {name!r} (embodiment asks for {key})", f"it has {sorted(table)}")
        spec = table[name]
        out.append(_Slice(key, spec.get("original_key", default_column), int(spec["start"]), int(spec["end"])))
    return out


def _resolve_cameras(names: tuple[str, ...], modality: dict, features: dict, where: Path) -> list[str]:
    table = modality.get("video") or {}
    cameras = []
    for key in names:
        name = key.split(".", 1)[1]
        column = table.get(name, {}).get("original_key", name)
        if features.get(column, {}).get("dtype") not in ("video", "image"):
            raise DataError(where, f"camera {key} maps to {column!r}, which is not a video or image feature",
                            f"features: {sorted(features)}")
        cameras.append(column)
    return cameras


def _default_modality(embodiment: EmbodimentConfig, features: dict, where: Path) -> dict:
    """The first default layout of the embodiment whose columns all exist in `features`."""
    for candidate in embodiment.default_modalities:
        try:
            validate_modality(candidate, features, where)
        except DataError:
            continue
        return candidate
    raise DataError(where, f"is missing, and no default layout of robot type {embodiment.robot_type!r} "
                    f"matches the features {sorted(features)}", "add a GR00T modality.json to the dataset")


class TemporalDataset(Dataset):
    """Every frame of every episode is a base step; `len` is the dataset's frame count."""

    def __init__(
        self,
        root: str | Path,
        embodiment: EmbodimentConfig,
        *,
        include_state: bool = False,
        video_backend: str = "pyav",
        decoder_cache_size: int = 64,
    ):
        self.reader = LeRobotReader(root, video_backend=video_backend, decoder_cache_size=decoder_cache_size)
        self.embodiment = embodiment
        self.include_state = include_state
        meta = self.reader.meta
        where = meta.root / "meta" / "modality.json"
        modality = meta.modality or _default_modality(embodiment, meta.features, where)
        self.cameras = _resolve_cameras(embodiment.video_keys, modality, meta.features, where)
        if not embodiment.state_keys:  # the state's statistics and normalizer assume a width of at least 1
            raise DataError(where, f"embodiment {embodiment.robot_type!r} declares no state keys",
                            "add one to its state_keys, even if include_state stays off")
        self.state_slices = _resolve_slices("state", embodiment.state_keys, modality, "observation.state", where)
        self.action_slices = _resolve_slices("action", embodiment.action_keys, modality, "action", where)
        for s in self.state_slices + self.action_slices:
            if s.column not in self.reader.numeric_keys:
                raise DataError(where, f"{s.key} reads column {s.column!r}, which is not a numeric feature of info.json")
        self.action = self._gather(self.action_slices)  # (N, A) raw
        self.state = self._gather(self.state_slices)  # (N, S) raw
        self._check_finite()
        self.tasks = self._frame_tasks()
        self._normalizers: tuple[Normalizer, Normalizer] | None = None

    # ------------------------------------------------------------------ setup
    def _gather(self, slices: list[_Slice]) -> np.ndarray:
        return np.concatenate([self.reader.column(s.column)[:, s.start : s.end] for s in slices], axis=1).astype(np.float32)

    def _check_finite(self) -> None:
        for name, values, slices in (("action", self.action, self.action_slices), ("state", self.state, self.state_slices)):
            bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
            if bad_rows.size:
                row = int(bad_rows[0])
                ep = int(np.searchsorted(self.reader.episode_starts, row, side="right") - 1)
                ref = self.reader.episodes[ep]
                raise DataError(
                    ref.data_path,
                    f"{name} columns {sorted({s.column for s in slices})} hold NaN/inf: {bad_rows.size} rows, "
                    f"first at episode {ref.index} frame {row - int(self.reader.episode_starts[ep])}",
                    "clean or drop those episodes; sagrflow never trains on non-finite targets",
                )

    def _frame_tasks(self) -> list[str]:
        """Instruction per row: from task_index when present, else the episode's first task."""
        meta = self.reader.meta
        if "task_index" in self.reader.numeric_keys:
            idx = self.reader.column("task_index")[:, 0].astype(np.int64)
            unknown = sorted(set(np.unique(idx).tolist()) - set(meta.tasks))
            if unknown:
                raise DataError(meta.root / "meta", f"task_index values {unknown[:5]} are not in the tasks table")
            return [meta.tasks[int(i)] for i in idx]
        return [t for ep in meta.episodes for t in [ep.tasks[0] if ep.tasks else ""] * ep.length]

    # ------------------------------------------------------------------ normalization
    def raw_stats(self) -> tuple[FeatureStats, FeatureStats]:
        """(state, action) stats of this dataset, in embodiment key order."""
        columns = sorted({s.column for s in self.state_slices + self.action_slices})
        per_column = dataset_stats(self.reader, columns)

        def vector(slices: list[_Slice]) -> FeatureStats:
            return concat_stats([per_column[s.column].slice(s.start, s.end) for s in slices])

        return vector(self.state_slices), vector(self.action_slices)

    def modes(self) -> tuple[list[str], list[str]]:
        def expand(slices: list[_Slice]) -> list[str]:
            return [self.embodiment.mode(s.key) for s in slices for _ in range(s.end - s.start)]

        return expand(self.state_slices), expand(self.action_slices)

    def set_normalizers(self, state: Normalizer, action: Normalizer) -> None:
        self._normalizers = (state, action)

    @property
    def normalizers(self) -> tuple[Normalizer, Normalizer]:
        if self._normalizers is None:
            state_stats, action_stats = self.raw_stats()
            state_modes, action_modes = self.modes()
            self._normalizers = (Normalizer(state_stats, state_modes), Normalizer(action_stats, action_modes))
        return self._normalizers

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        return int(self.reader.episode_starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global row -> (episode position, t)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} steps")
        ep = int(np.searchsorted(self.reader.episode_starts, index, side="right") - 1)
        return ep, index - int(self.reader.episode_starts[ep])

    def __getitem__(self, index: int) -> dict:
        return self.sample(*self.locate(index))

    def _frames(self, episode: int, camera: str, frame_ids: np.ndarray) -> np.ndarray:  # -> (N, h, w, 3) uint8
        return self.reader.frames(episode, camera, frame_ids)

    def sample(self, episode: int, t: int) -> dict:
        emb = self.embodiment
        ref = self.reader.episodes[episode]
        T, k, H = ref.length, emb.k, emb.horizon
        if not 0 <= t < T:
            raise IndexError(f"t={t} outside episode {ref.index} of length {T}")
        tk = min(t + k, T - 1)
        valid = emb.has_tk_observation and t + k < T
        frame_ids = np.array([t, tk] if tk != t else [t])
        image_t, image_tk = [], []
        for cam in self.cameras:
            # channels-last views: collate copies them, layout kept, in its one copy
            frames = to_chw_uint8(self._frames(episode, cam, frame_ids), emb.image_size, contiguous=False)  # (1|2, 3, h, w)
            image_t.append(frames[0])
            image_tk.append(frames[-1])
        row0 = int(self.reader.episode_starts[episode])
        steps = t + np.arange(H)
        action_mask = (steps < T).astype(np.float32)
        rows = row0 + np.minimum(steps, T - 1)
        state_norm, action_norm = self.normalizers
        sample = {
            keys.IMAGE_T: image_t,
            keys.IMAGE_TK: image_tk,
            keys.IMAGE: image_t,
            keys.VALID_TK: float(valid),
            keys.TEMPORAL_DELTA_K: k,
            keys.ACTION: torch.from_numpy(action_norm.normalize(self.action[rows])),
            keys.ACTION_MASK: torch.from_numpy(action_mask),
            keys.LANG: self.tasks[row0 + t],
            keys.EPISODE_INDEX: ref.index,
            keys.FRAME_INDEX: t,
        }
        if self.include_state:
            state = state_norm.normalize(self.state[[row0 + t, row0 + tk]])
            sample[keys.STATE_T] = torch.from_numpy(state[0])
            sample[keys.STATE_TK] = torch.from_numpy(state[1])
            sample[keys.STATE] = sample[keys.STATE_T]
        return sample

    def expected_valid_ratio(self) -> float:
        """The valid_tk ratio over all base steps that the episode lengths imply."""
        if not self.embodiment.has_tk_observation:
            return 0.0
        k = self.embodiment.k
        return sum(max(e.length - k, 0) for e in self.reader.episodes) / len(self)
