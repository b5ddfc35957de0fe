"""Write LeRobot v2.1 and v3.0 datasets from episodes held in memory.

Numeric columns round-trip bit for bit; video is lossy (h264 or AV1, short GOP for
random access), images stored in the parquet are PNG and therefore exact.
`meta/info.json` is written last, so an interrupted write is never mistaken for a
dataset by the reader.

Legend: T frames in an episode, S state dim, A action dim, h/w image size.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sagrflow.core.normalize import FeatureStats, compute_stats
from sagrflow.data.errors import DataError
from sagrflow.data.lerobot.meta import PATH_TEMPLATES, VERSIONS

VIDEO_CODECS = {"h264": "libx264", "av1": "libsvtav1"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds. `video_codec=None` stores images inside the parquet as PNG."""

    fps: int
    camera_keys: tuple[str, ...]
    image_size: tuple[int, int]  # (h, w)
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    robot_type: str = "unknown"
    version: str = "v2.1"
    video_codec: str | None = "h264"
    gop: int = 2  # keyframe interval: LeRobot's own encoder default (g=2), for random access
    crf: int = 18
    state_key: str = "observation.state"
    action_key: str = "action"
    episodes_per_file: int = 50  # v3.0 only: episodes that share one parquet/mp4 file
    modality: dict | None = None  # written as meta/modality.json (GR00T layout)

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.video_codec is not None and self.video_codec not in VIDEO_CODECS:
            raise ValueError(f"video_codec must be one of {sorted(VIDEO_CODECS)} or None, got {self.video_codec!r}")
        h, w = self.image_size
        if self.video_codec and (h % 2 or w % 2):
            raise ValueError(f"yuv420 video needs even image sizes, got {self.image_size}")


@dataclass
class Episode:
    task: str
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera key -> (T, h, w, 3) uint8

    @property
    def length(self) -> int:
        return int(self.action.shape[0])


class _VideoStream:
    """One open mp4 being appended to; v3.0 keeps it open across episodes."""

    def __init__(self, path: Path, spec: DatasetSpec):
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config to stderr otherwise
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(VIDEO_CODECS[spec.video_codec], rate=spec.fps)
        self.stream.height, self.stream.width = spec.image_size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = spec.gop
        preset = "veryfast" if spec.video_codec == "h264" else "10"
        self.stream.options = {"crf": str(spec.crf), "preset": preset}
        self.stream.codec_context.max_b_frames = 0  # no reordering delay: a seek decodes only up to its target
        self.frames = 0

    def append(self, images: np.ndarray) -> None:  # (T, h, w, 3) uint8
        import av

        for img in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _vector_column(values: np.ndarray) -> pa.Array:  # (T, d) -> fixed_size_list<float32>[d]
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _json_stats(stats: dict[str, FeatureStats]) -> dict:
    return {key: s.to_json() for key, s in stats.items()}


class LeRobotWriter:
    """`with LeRobotWriter(root, spec) as w: w.add_episode(ep)`; meta is written on exit."""

    def __init__(self, root: str | Path, spec: DatasetSpec, overwrite: bool = False):
        self.root = Path(root)
        self.spec = spec
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise DataError(self.root, "output folder is not empty", "pass overwrite=True or choose another folder")
            shutil.rmtree(self.root)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.total_frames = 0
        self._state_rows: list[np.ndarray] = []
        self._action_rows: list[np.ndarray] = []
        self._episode_stats: list[dict] = []
        # v3.0: the file currently being filled
        self._pending_tables: list[pa.Table] = []
        self._videos: dict[str, _VideoStream] = {}
        self._file_index = 0
        self._finalized = False

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self._close_videos()

    # ---------------------------------------------------------------- episodes
    def _check(self, ep: Episode) -> None:
        s = self.spec
        n = ep.length
        idx = len(self.episodes)
        if ep.state.shape != (n, len(s.state_names)) or ep.action.shape != (n, len(s.action_names)):
            raise DataError(
                f"episode {idx}",
                f"state {ep.state.shape} / action {ep.action.shape} do not match the spec "
                f"({n}, {len(s.state_names)}) / ({n}, {len(s.action_names)})",
            )
        if n == 0:
            raise DataError(f"episode {idx}", "has no frames")
        if set(ep.images) != set(s.camera_keys):
            raise DataError(f"episode {idx}", f"cameras {sorted(ep.images)} differ from the spec's {list(s.camera_keys)}")
        for key, frames in ep.images.items():
            if frames.shape != (n, *s.image_size, 3) or frames.dtype != np.uint8:
                raise DataError(f"episode {idx}", f"camera {key} has {frames.dtype}{frames.shape}, want uint8({n}, {s.image_size}, 3)")
        for name, arr in (("state", ep.state), ("action", ep.action)):
            if not np.all(np.isfinite(arr)):
                raise DataError(f"episode {idx}", f"{name} holds non-finite values")

    def add_episode(self, ep: Episode) -> None:
        if self._finalized:
            raise RuntimeError("writer is finalized")
        self._check(ep)
        s = self.spec
        ep_index = len(self.episodes)
        n = ep.length
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        timestamps = (np.arange(n, dtype=np.float64) / s.fps).astype(np.float32)
        columns = {
            s.state_key: _vector_column(ep.state),
            s.action_key: _vector_column(ep.action),
            "timestamp": pa.array(timestamps),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, ep_index, dtype=np.int64)),
            "index": pa.array(np.arange(self.total_frames, self.total_frames + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        }
        if s.video_codec is None:
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            for key in s.camera_keys:
                cells = [{"bytes": _png(img), "path": None} for img in ep.images[key]]
                columns[key] = pa.array(cells, type=image_type)
        table = pa.table(columns)
        meta = {"episode_index": ep_index, "tasks": [ep.task], "length": n}
        if s.version == "v2.1":
            self._write_v21(ep, ep_index, table)
        else:
            meta.update(self._write_v30(ep, table))
        self.episodes.append(meta)
        self._state_rows.append(ep.state.astype(np.float32))
        self._action_rows.append(ep.action.astype(np.float32))
        ep_stats = {s.state_key: compute_stats(ep.state), s.action_key: compute_stats(ep.action)}
        self._episode_stats.append({"episode_index": ep_index, "stats": _json_stats(ep_stats)})
        self.total_frames += n

    def _write_v21(self, ep: Episode, ep_index: int, table: pa.Table) -> None:
        chunk = ep_index // 1000
        data_path = self.root / PATH_TEMPLATES["v2.1"]["data"].format(episode_chunk=chunk, episode_index=ep_index)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)
        if self.spec.video_codec:
            for key in self.spec.camera_keys:
                rel = PATH_TEMPLATES["v2.1"]["video"].format(episode_chunk=chunk, episode_index=ep_index, video_key=key)
                video = _VideoStream(self.root / rel, self.spec)
                video.append(ep.images[key])
                video.close()

    def _write_v30(self, ep: Episode, table: pa.Table) -> dict:
        s = self.spec
        chunk, file_index = divmod(self._file_index, 1000)
        from_index = self.total_frames
        meta = {
            "data/chunk_index": chunk,
            "data/file_index": file_index,
            "dataset_from_index": from_index,
            "dataset_to_index": from_index + ep.length,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        self._pending_tables.append(table)
        if s.video_codec:
            for key in s.camera_keys:
                if key not in self._videos:
                    rel = PATH_TEMPLATES["v3.0"]["video"].format(video_key=key, chunk_index=chunk, file_index=file_index)
                    self._videos[key] = _VideoStream(self.root / rel, s)
                video = self._videos[key]
                start = video.frames / s.fps
                video.append(ep.images[key])
                meta[f"videos/{key}/chunk_index"] = chunk
                meta[f"videos/{key}/file_index"] = file_index
                meta[f"videos/{key}/from_timestamp"] = start
                meta[f"videos/{key}/to_timestamp"] = video.frames / s.fps
        if len(self._pending_tables) >= s.episodes_per_file:
            self._flush_v30_file()
        return meta

    def _flush_v30_file(self) -> None:
        if not self._pending_tables:
            return
        chunk, file_index = divmod(self._file_index, 1000)
        path = self.root / PATH_TEMPLATES["v3.0"]["data"].format(chunk_index=chunk, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._pending_tables), path)
        self._pending_tables = []
        self._close_videos()
        self._file_index += 1

    def _close_videos(self) -> None:
        for video in self._videos.values():
            video.close()
        self._videos = {}

    # ---------------------------------------------------------------- meta
    def _features(self) -> dict:
        s = self.spec
        h, w = s.image_size
        features: dict[str, dict] = {}
        for key in s.camera_keys:
            if s.video_codec:
                features[key] = {
                    "dtype": "video",
                    "shape": [h, w, 3],
                    "names": ["height", "width", "channels"],
                    "info": {
                        "video.fps": float(s.fps),
                        "video.height": h,
                        "video.width": w,
                        "video.channels": 3,
                        "video.codec": s.video_codec,
                        "video.pix_fmt": "yuv420p",
                        "video.is_depth_map": False,
                        "has_audio": False,
                    },
                }
            else:
                features[key] = {"dtype": "image", "shape": [h, w, 3], "names": ["height", "width", "channel"]}
        features[s.state_key] = {"dtype": "float32", "shape": [len(s.state_names)], "names": list(s.state_names)}
        features[s.action_key] = {"dtype": "float32", "shape": [len(s.action_names)], "names": list(s.action_names)}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        return features

    def finalize(self) -> Path:
        if self._finalized:
            return self.root
        s = self.spec
        if not self.episodes:
            raise DataError(self.root, "no episodes were added")
        meta = self.root / "meta"
        if s.version == "v3.0":
            self._flush_v30_file()
            self._write_v30_meta(meta)
        else:
            self._write_jsonl(meta / "episodes.jsonl", self.episodes)
            self._write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self.tasks.items()])
            self._write_jsonl(meta / "episodes_stats.jsonl", self._episode_stats)
        stats = {
            s.state_key: compute_stats(np.concatenate(self._state_rows)),
            s.action_key: compute_stats(np.concatenate(self._action_rows)),
        }
        (meta / "stats.json").write_text(json.dumps(_json_stats(stats), indent=2))
        if s.modality is not None:
            (meta / "modality.json").write_text(json.dumps(s.modality, indent=2))
        n_eps = len(self.episodes)
        info = {
            "codebase_version": s.version,
            "robot_type": s.robot_type,
            "total_episodes": n_eps,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": 1000,
            "fps": s.fps,
            "splits": {"train": f"0:{n_eps}"},
            "data_path": PATH_TEMPLATES[s.version]["data"],
            "video_path": PATH_TEMPLATES[s.version]["video"] if s.video_codec else None,
            "features": self._features(),
        }
        if s.version == "v3.0":  # exactly LeRobot's v3.0 keys: its DatasetInfo (0.5+) warns on v2.x-only ones
            info["data_files_size_in_mb"] = 100
            info["video_files_size_in_mb"] = 500
        else:
            info["total_videos"] = n_eps * len(s.camera_keys) if s.video_codec else 0
            info["total_chunks"] = (n_eps - 1) // 1000 + 1
        tmp = meta / "info.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(meta / "info.json")
        self._finalized = True
        return self.root

    @staticmethod
    def _write_jsonl(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def _write_v30_meta(self, meta: Path) -> None:
        episodes = pa.Table.from_pylist(self.episodes)
        episodes = episodes.set_column(
            episodes.schema.get_field_index("tasks"), "tasks", pa.array([e["tasks"] for e in self.episodes], pa.list_(pa.string()))
        )
        path = meta / "episodes" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, path)
        names = list(self.tasks)
        tasks = pa.table({"task_index": pa.array([self.tasks[t] for t in names], pa.int64()), "task": pa.array(names)})
        # pandas metadata makes `pd.read_parquet` index the table by task, as LeRobot's own writer does
        tasks = tasks.replace_schema_metadata({b"pandas": json.dumps(_PANDAS_TASKS_META).encode()})
        pq.write_table(tasks, meta / "tasks.parquet")


_PANDAS_TASKS_META = {
    "index_columns": ["task"],
    "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}
    ],
    "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
    ],
    "creator": {"library": "pyarrow", "version": pa.__version__},
    "pandas_version": "2.2.0",
}
