"""Statistics and normalization shared by training and inference.

Data code normalizes on the way in; `predict_action` un-normalizes on the way out with
the same `Normalizer`, restored from the stats saved beside the checkpoint.

Modes (per dimension):
  min_max   x -> 2 (x - min) / (max - min) - 1, clipped to [-1, 1]
  q99       the same with q01 / q99 as the range (robust to outliers), clipped
  mean_std  x -> (x - mean) / std
  none      identity
A dimension whose range is zero maps to 0 and back to its constant value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("min_max", "q99", "mean_std", "none")
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")
_EPS = 1e-8


@dataclass(frozen=True)
class FeatureStats:
    """Per-dimension statistics of one vector feature, over `count` frames."""

    min: np.ndarray  # (d,)
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    @property
    def dim(self) -> int:
        return int(self.min.shape[0])

    def to_json(self) -> dict:
        out = {name: getattr(self, name).astype(np.float64).tolist() for name in STAT_NAMES}
        out["count"] = [int(self.count)]
        return out

    @classmethod
    def from_json(cls, data: dict) -> FeatureStats:
        missing = [n for n in STAT_NAMES if n not in data]
        if missing:
            raise KeyError(f"stats lack {missing}")
        count = data.get("count", [0])
        count = int(count[0] if isinstance(count, list | tuple) else count)
        arrays = {n: np.asarray(data[n], dtype=np.float64).reshape(-1) for n in STAT_NAMES}
        return cls(**arrays, count=count)

    def slice(self, start: int, end: int) -> FeatureStats:
        return FeatureStats(**{n: getattr(self, n)[start:end] for n in STAT_NAMES}, count=self.count)


def compute_stats(values: np.ndarray) -> FeatureStats:  # values (N, d)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"compute_stats wants a non-empty (N, d) array, got shape {values.shape}")
    q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
    return FeatureStats(
        min=values.min(0), max=values.max(0), mean=values.mean(0), std=values.std(0), q01=q01, q99=q99,
        count=int(values.shape[0]),
    )


def merge_stats(parts: list[FeatureStats]) -> FeatureStats:
    """Pool stats of several datasets of one embodiment.

    min/max/mean/std are exact (pooled variance). Quantiles cannot be merged exactly
    from summaries; q01/q99 are the count-weighted mean of the parts' quantiles, the
    same approximation LeRobot's aggregate uses.
    """
    if not parts:
        raise ValueError("merge_stats needs at least one FeatureStats")
    dims = {p.dim for p in parts}
    if len(dims) != 1:
        raise ValueError(f"cannot merge stats of different widths {sorted(dims)}")
    counts = np.array([p.count for p in parts], dtype=np.float64)
    if np.any(counts <= 0):
        raise ValueError("every merged FeatureStats needs a positive count")
    w = (counts / counts.sum())[:, None]
    mean = (w * np.stack([p.mean for p in parts])).sum(0)
    second = (w * np.stack([p.std**2 + p.mean**2 for p in parts])).sum(0)
    return FeatureStats(
        min=np.min([p.min for p in parts], axis=0),
        max=np.max([p.max for p in parts], axis=0),
        mean=mean,
        std=np.sqrt(np.maximum(second - mean**2, 0.0)),
        q01=(w * np.stack([p.q01 for p in parts])).sum(0),
        q99=(w * np.stack([p.q99 for p in parts])).sum(0),
        count=int(counts.sum()),
    )


def _is_tensor(x) -> bool:
    # duck-typed so this module (read by configs and the CLI) does not import torch
    return type(x).__module__.startswith("torch")


class Normalizer:
    """Normalizes a (..., d) vector per dimension; `unnormalize` is its inverse.

    Works on numpy arrays and torch tensors alike (the data path uses numpy, the
    policy torch); the parameters are float64 and cast to the input's dtype.
    """

    def __init__(self, stats: FeatureStats, modes: list[str] | tuple[str, ...]):
        if len(modes) != stats.dim:
            raise ValueError(f"{len(modes)} normalization modes for a {stats.dim}-dim feature")
        bad = sorted({m for m in modes if m not in MODES})
        if bad:
            raise ValueError(f"unknown normalization mode(s) {bad}; use one of {MODES}")
        self.stats = stats
        self.modes = tuple(modes)
        modes_arr = np.asarray(self.modes)
        lo = np.where(modes_arr == "q99", stats.q01, stats.min)
        hi = np.where(modes_arr == "q99", stats.q99, stats.max)
        ranged = np.isin(modes_arr, ("min_max", "q99"))
        std = np.where(stats.std > _EPS, stats.std, 1.0)
        # x_norm = (x - shift) * scale (clipped where ranged); constant dims get scale 0
        span = hi - lo
        self._shift = np.where(ranged, (lo + hi) / 2, np.where(modes_arr == "mean_std", stats.mean, 0.0))
        self._scale = np.where(ranged, np.where(span > _EPS, 2.0 / np.where(span > _EPS, span, 1.0), 0.0),
                               np.where(modes_arr == "mean_std", 1.0 / std, 1.0))
        self._inv_scale = np.where(ranged, span / 2, np.where(modes_arr == "mean_std", std, 1.0))
        self._clip = ranged

    @property
    def dim(self) -> int:
        return self.stats.dim

    def _params(self, like):
        if _is_tensor(like):
            import torch

            def conv(a):
                return torch.as_tensor(a, dtype=like.dtype, device=like.device)
            return conv(self._shift), conv(self._scale), conv(self._inv_scale), torch.as_tensor(self._clip, device=like.device)
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float32
        return self._shift.astype(dtype), self._scale.astype(dtype), self._inv_scale.astype(dtype), self._clip

    def _check(self, x) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"normalizer expects last dim {self.dim}, got shape {tuple(x.shape)}")

    def normalize(self, x):
        self._check(x)
        shift, scale, _, clip = self._params(x)
        y = (x - shift) * scale
        if _is_tensor(x):
            return y.where(~clip, y.clamp(-1.0, 1.0))
        return np.where(clip, np.clip(y, -1.0, 1.0), y).astype(shift.dtype)

    def unnormalize(self, y):
        self._check(y)
        shift, _, inv_scale, _ = self._params(y)
        return y * inv_scale + shift

    def to_json(self) -> dict:
        return {"modes": list(self.modes), "stats": self.stats.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> Normalizer:
        return cls(FeatureStats.from_json(data["stats"]), data["modes"])
