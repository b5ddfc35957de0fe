"""`sagrflow data inspect PATH`: a readable summary of a LeRobot dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagrflow.data.lerobot.reader import LeRobotReader
from sagrflow.data.stats import dataset_stats


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in np.asarray(values).reshape(-1)[:8]) + (", ...]" if np.size(values) > 8 else "]")


def inspect_dataset(path: str | Path) -> str:
    reader = LeRobotReader(path)
    meta = reader.meta
    lengths = np.array([e.length for e in meta.episodes])
    lines = [
        f"dataset     {meta.root}",
        f"format      LeRobot {meta.version}   robot_type {meta.robot_type}   fps {meta.fps:g}",
        f"episodes    {len(meta.episodes)}   frames {meta.total_frames}   "
        f"length min/median/max {lengths.min()}/{int(np.median(lengths))}/{lengths.max()}",
        f"modality    {'meta/modality.json' if meta.modality else 'none (embodiment default applies)'}",
        "features:",
    ]
    for key, feat in meta.features.items():
        extra = ""
        if feat.get("dtype") == "video":
            extra = f"  codec {feat.get('info', {}).get('video.codec', '?')}"
        names = feat.get("names")
        if isinstance(names, list) and names and feat.get("dtype") not in ("video", "image"):
            extra += f"  names {names}"
        lines.append(f"  {key:<34} {feat.get('dtype', '?'):<8} {feat.get('shape')}{extra}")
    lines.append(f"tasks ({len(meta.tasks)}):")
    for index, task in sorted(meta.tasks.items())[:20]:
        lines.append(f"  {index:>4}  {task}")
    if len(meta.tasks) > 20:
        lines.append(f"  ... {len(meta.tasks) - 20} more")
    float_keys = [k for k in reader.numeric_keys if meta.features[k]["dtype"].startswith("float") and k != "timestamp"]
    if float_keys:
        lines.append("stats:")
        for key, s in dataset_stats(reader, float_keys).items():
            lines.append(f"  {key}")
            for name in ("min", "max", "mean", "std", "q01", "q99"):
                lines.append(f"    {name:<5} {_fmt(getattr(s, name))}")
    return "\n".join(lines)
