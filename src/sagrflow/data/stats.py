"""Per-dataset statistics: LeRobot's own when complete, otherwise computed once and cached beside the data."""

from __future__ import annotations

import json

import numpy as np

from sagrflow.core.normalize import STAT_NAMES, FeatureStats, Normalizer, compute_stats, merge_stats
from sagrflow.data.cache import atomic_write_bytes, derived_path
from sagrflow.data.lerobot.reader import LeRobotReader, read_stats_json


def dataset_stats(reader: LeRobotReader, keys: list[str]) -> dict[str, FeatureStats]:
    """Stats of the numeric columns `keys`.

    `meta/stats.json` is used for a column when it carries every statistic we need
    (min, max, mean, std, q01, q99) at the right width; LeRobot v2.x files usually lack
    the quantiles, so those columns are computed from the data and cached in
    `derived_path(root, "stats.json")`, keyed by the index fingerprint.
    """
    official = read_stats_json(reader.root)
    out: dict[str, FeatureStats] = {}
    missing = []
    for key in keys:
        entry = official.get(key, {})
        if all(n in entry for n in STAT_NAMES):
            stats = FeatureStats.from_json({**entry, "count": entry.get("count", [reader.column(key).shape[0]])})
            if stats.dim == reader.column(key).shape[1]:
                out[key] = stats
                continue
        missing.append(key)
    if not missing:
        return out
    cache = derived_path(reader.root, "stats.json")
    fingerprint = reader.fingerprint
    cached = {}
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("fingerprint") == fingerprint:
                cached = data["stats"]
        except (json.JSONDecodeError, KeyError):
            cached = {}
    computed = {}
    for key in missing:
        stats = FeatureStats.from_json(cached[key]) if key in cached else compute_stats(reader.column(key))
        out[key] = stats
        computed[key] = stats.to_json()
    if computed.keys() - cached.keys():
        payload = {"fingerprint": fingerprint, "stats": {**cached, **computed}}
        atomic_write_bytes(cache, json.dumps(payload).encode())
    return out


def concat_stats(parts: list[FeatureStats]) -> FeatureStats:
    """Stats of a vector made by concatenating features side by side (e.g. state sub-keys)."""
    return FeatureStats(
        **{n: np.concatenate([getattr(p, n) for p in parts]) for n in STAT_NAMES}, count=min(p.count for p in parts)
    )


def merged_normalizer(per_dataset: list[FeatureStats], modes: list[str]) -> Normalizer:
    """One normalizer for an embodiment, from the stats of each of its datasets."""
    return Normalizer(merge_stats(per_dataset), modes)
