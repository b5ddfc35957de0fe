"""LeRobot metadata: info.json, episodes, tasks and GR00T's modality.json, for v2.0/v2.1 and v3.0.

Everything here is small and read once; the per-frame columns live in `reader.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from sagrflow.data.errors import DataError

VERSIONS = ("v2.0", "v2.1", "v3.0")
PATH_TEMPLATES = {
    "v2.1": {
        "data": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    },
    "v3.0": {
        "data": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
    },
}
PATH_TEMPLATES["v2.0"] = PATH_TEMPLATES["v2.1"]


@dataclass(frozen=True)
class VideoRef:
    path: Path
    from_timestamp: float  # where the episode starts inside the file (0 for one file per episode)


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode's rows and frames live."""

    index: int  # episode_index
    length: int
    tasks: tuple[str, ...]
    data_path: Path
    row_start: int  # first row of the episode inside data_path
    videos: dict[str, VideoRef] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetMeta:
    root: Path
    version: str
    fps: float
    robot_type: str
    features: dict[str, dict]
    tasks: dict[int, str]  # task_index -> instruction
    episodes: tuple[EpisodeRef, ...]
    modality: dict | None  # meta/modality.json, validated against features

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def feature_dim(self, key: str) -> int:
        shape = self.features[key].get("shape") or [1]
        return int(shape[0]) if len(shape) == 1 else int(shape[-1])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"is not valid JSON ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(path, "is missing", "v2.x datasets need meta/episodes.jsonl and meta/tasks.jsonl")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {n} is not valid JSON ({exc})") from exc
    return rows


def _chunk(ep_index: int, info: dict) -> int:
    return ep_index // int(info.get("chunks_size", 1000))


def _episodes_v2(root: Path, info: dict) -> tuple[dict[int, str], tuple[EpisodeRef, ...]]:
    tasks = {int(r["task_index"]): r["task"] for r in _read_jsonl(root / "meta" / "tasks.jsonl")}
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    episodes = []
    for r in _read_jsonl(root / "meta" / "episodes.jsonl"):
        idx = int(r["episode_index"])
        chunk = _chunk(idx, info)
        data_path = root / info["data_path"].format(episode_chunk=chunk, episode_index=idx)
        videos = {
            key: VideoRef(root / info["video_path"].format(episode_chunk=chunk, episode_index=idx, video_key=key), 0.0)
            for key in video_keys
        }
        tasks_of = r.get("tasks", [])
        episodes.append(EpisodeRef(idx, int(r["length"]), tuple(tasks_of), data_path, 0, videos))
    return tasks, tuple(sorted(episodes, key=lambda e: e.index))


def _episodes_v3(root: Path, info: dict) -> tuple[dict[int, str], tuple[EpisodeRef, ...]]:
    tasks_path = root / "meta" / "tasks.parquet"
    if not tasks_path.is_file():
        raise DataError(tasks_path, "is missing", "v3.0 datasets keep their instructions in meta/tasks.parquet")
    table = pq.read_table(tasks_path).to_pydict()
    name_col = "task" if "task" in table else "__index_level_0__"
    if name_col not in table or "task_index" not in table:
        raise DataError(tasks_path, f"has columns {sorted(table)}, expected task and task_index")
    tasks = {int(i): t for i, t in zip(table["task_index"], table[name_col], strict=True)}
    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise DataError(root / "meta" / "episodes", "holds no chunk-*/file-*.parquet", "is this a complete v3.0 dataset?")
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    episodes = []
    file_start: dict[Path, int] = {}  # data file -> first global row index it holds
    rows = [r for path in ep_files for r in pq.read_table(path).to_pylist()]
    for r in rows:
        data_path = root / info["data_path"].format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))
        start = int(r["dataset_from_index"])
        file_start[data_path] = min(file_start.get(data_path, start), start)
    for r in rows:
        data_path = root / info["data_path"].format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))
        videos = {}
        for key in video_keys:
            path = root / info["video_path"].format(
                video_key=key, chunk_index=int(r[f"videos/{key}/chunk_index"]), file_index=int(r[f"videos/{key}/file_index"])
            )
            videos[key] = VideoRef(path, float(r[f"videos/{key}/from_timestamp"]))
        length = int(r["length"])
        if int(r["dataset_to_index"]) - int(r["dataset_from_index"]) != length:
            raise DataError(ep_files[0], f"episode {r['episode_index']}: from/to indices disagree with length {length}")
        row_start = int(r["dataset_from_index"]) - file_start[data_path]
        episodes.append(EpisodeRef(int(r["episode_index"]), length, tuple(r.get("tasks") or ()), data_path, row_start, videos))
    return tasks, tuple(sorted(episodes, key=lambda e: e.index))


def validate_modality(modality: dict, features: dict, where: Path) -> None:
    """Check every sub-key slice and key rename against the features of info.json."""
    defaults = {"state": "observation.state", "action": "action"}
    for group, default_key in defaults.items():
        for name, spec in (modality.get(group) or {}).items():
            key = spec.get("original_key", default_key)
            if key not in features:
                raise DataError(where, f"{group}.{name} reads column {key!r}, which info.json does not have")
            dim = int((features[key].get("shape") or [1])[0])
            start, end = spec.get("start"), spec.get("end")
            if start is None or end is None or not (0 <= int(start) < int(end) <= dim):
                raise DataError(
                    where,
                    f"{group}.{name} slice [{start}:{end}] is out of range for {key!r} of width {dim}",
                    f"use 0 <= start < end <= {dim}",
                )
    for name, spec in (modality.get("video") or {}).items():
        key = spec.get("original_key", name)
        if key not in features:
            raise DataError(where, f"video.{name} renames {key!r}, which info.json does not have")


def load_meta(root: str | Path) -> DatasetMeta:
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist", "check data_root_dir and the dataset name")
    if not info_path.is_file():
        raise DataError(root, "has no meta/info.json; this is not a LeRobot dataset (or its write was interrupted)")
    info = _read_json(info_path)
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise DataError(info_path, f"codebase_version {version!r} is not supported", f"supported: {VERSIONS}")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DataError(info_path, f"lacks the {key!r} entry")
    if version == "v3.0":
        tasks, episodes = _episodes_v3(root, info)
    else:
        tasks, episodes = _episodes_v2(root, info)
    if not episodes:
        raise DataError(root, "holds no episodes")
    modality = None
    modality_path = root / "meta" / "modality.json"
    if modality_path.is_file():
        modality = _read_json(modality_path)
        validate_modality(modality, info["features"], modality_path)
    return DatasetMeta(
        root=root,
        version=version,
        fps=float(info["fps"]),
        robot_type=str(info.get("robot_type") or "unknown"),
        features=info["features"],
        tasks=tasks,
        episodes=episodes,
        modality=modality,
    )
