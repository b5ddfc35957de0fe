"""Read one LeRobot dataset: numeric columns held per episode in memory, frames on demand.

The episode index (every numeric column, concatenated, plus per-episode row offsets)
is built once from the parquet files, checked against info.json, and cached on disk;
later opens load it in milliseconds. Frames come from mp4 files through a per-process
`DecoderCache`, or from PNG bytes stored in the parquet through a per-process LRU of
image columns.

Legend: T frames in an episode, N requested frames, d feature width.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sagrflow.data.cache import ProcessLocalLRU, atomic_write_bytes, derived_path
from sagrflow.data.errors import DataError
from sagrflow.data.lerobot.meta import DatasetMeta, EpisodeRef, load_meta
from sagrflow.data.video import DecoderCache

_NUMERIC = {"float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"}
_INDEX_VERSION = 3  # 3: indexes built before v2 row counts were checked are rebuilt


def _column_to_numpy(col: pa.ChunkedArray, width: int, where: Path, key: str) -> np.ndarray:  # -> (rows, d)
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
        if flat.size != len(arr) * width:
            raise DataError(where, f"column {key!r} holds {flat.size} values for {len(arr)} rows; info.json says width {width}")
        return flat.reshape(len(arr), width)
    if width != 1:
        raise DataError(where, f"column {key!r} is a scalar column but info.json says width {width}")
    return arr.to_numpy(zero_copy_only=False).reshape(len(arr), 1)


def _decode_png(cell: dict) -> np.ndarray:  # -> (h, w, 3) uint8
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


class LeRobotReader:
    def __init__(self, root: str | Path, video_backend: str = "pyav", decoder_cache_size: int = 64, use_cache: bool = True):
        self.meta: DatasetMeta = load_meta(root)
        self.root = self.meta.root
        self.numeric_keys = [
            k for k, f in self.meta.features.items() if f.get("dtype") in _NUMERIC and len(f.get("shape") or [1]) == 1
        ]
        self._decoders = DecoderCache(video_backend, decoder_cache_size,
                                      table_dir=derived_path(self.root, "packets") if use_cache else None)
        self._image_columns = ProcessLocalLRU(self._open_image_file, capacity=4)
        lengths = np.array([e.length for e in self.meta.episodes], dtype=np.int64)
        self.episode_starts = np.concatenate([[0], np.cumsum(lengths)])  # row offsets of each episode
        self._columns = self._load_index(use_cache)

    # ------------------------------------------------------------------ index
    def _compute_fingerprint(self) -> str:
        """Changes whenever info.json, the episode metadata (which rows of which file) or any data file
        (size, mtime) changes: keys the derived caches."""
        h = hashlib.sha1()
        h.update(f"{_INDEX_VERSION}".encode())
        h.update((self.root / "meta" / "info.json").read_bytes())
        for e in self.meta.episodes:  # episodes dropped from meta/ alone shift every later row
            h.update(f"{e.index}:{e.length}:{e.data_path.name}:{e.row_start};".encode())
        for path in sorted({e.data_path for e in self.meta.episodes}):
            st = path.stat() if path.exists() else None
            h.update(f"{path.name}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
        return h.hexdigest()

    def _load_index(self, use_cache: bool) -> dict[str, np.ndarray]:
        # computed once per open (it stats every data file); the stats cache keys on it too
        fingerprint = self.fingerprint = self._compute_fingerprint()
        cache = derived_path(self.root, "index.npz") if use_cache else None
        if cache is not None and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    rows = int(self.episode_starts[-1])
                    if str(z["__fingerprint__"]) == fingerprint and all(len(z[k]) == rows for k in self.numeric_keys):
                        return {k: z[k] for k in self.numeric_keys}
            except (OSError, KeyError, ValueError):
                pass  # unreadable or stale cache: rebuild below
        columns = self._build_index()
        if cache is not None:
            buf = io.BytesIO()
            np.savez(buf, __fingerprint__=np.array(fingerprint), **columns)
            atomic_write_bytes(cache, buf.getvalue())
        return columns

    def _read_data_file(self, path: Path) -> pa.Table:
        if not path.is_file():
            raise DataError(path, "parquet file listed by the episode metadata is missing")
        try:
            return pq.read_table(path, columns=self.numeric_keys)
        except (pa.ArrowInvalid, OSError) as exc:
            names = pq.read_schema(path).names if path.stat().st_size else []
            missing = [k for k in self.numeric_keys if k not in names]
            if missing:
                raise DataError(path, f"lacks columns {missing} that meta/info.json declares as features") from exc
            raise DataError(path, f"cannot read parquet ({exc})") from exc

    def _build_index(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.numeric_keys}
        tables: dict[Path, pa.Table] = {}
        for ep in self.meta.episodes:
            table = tables.get(ep.data_path)
            if table is None:
                tables.clear()  # v2: one file per episode; v3: consecutive episodes share a file
                table = tables[ep.data_path] = self._read_data_file(ep.data_path)
            if self.meta.version.startswith("v2") and table.num_rows != ep.length:  # one episode per file
                raise DataError(ep.data_path, f"holds {table.num_rows} rows but meta/episodes.jsonl gives episode "
                                f"{ep.index} a length of {ep.length}", "the episode metadata disagrees with the parquet")
            if ep.row_start + ep.length > table.num_rows:
                raise DataError(
                    ep.data_path,
                    f"episode {ep.index} needs rows {ep.row_start}..{ep.row_start + ep.length - 1}, the file has {table.num_rows}",
                    "the episode metadata disagrees with the parquet",
                )
            rows = table.slice(ep.row_start, ep.length)
            for key in self.numeric_keys:
                parts[key].append(_column_to_numpy(rows.column(key), self.meta.feature_dim(key), ep.data_path, key))
            if "episode_index" in parts:
                got = parts["episode_index"][-1]
                if np.any(got != ep.index):
                    raise DataError(ep.data_path, f"rows for episode {ep.index} hold episode_index {int(got[got != ep.index][0])}")
        return {k: np.concatenate(v) for k, v in parts.items()}

    # ------------------------------------------------------------------ access
    @property
    def episodes(self) -> tuple[EpisodeRef, ...]:
        return self.meta.episodes

    def column(self, key: str) -> np.ndarray:  # (total_frames, d)
        if key not in self._columns:
            raise DataError(self.root, f"has no numeric column {key!r}", f"available: {self.numeric_keys}")
        return self._columns[key]

    def episode_column(self, episode: int, key: str) -> np.ndarray:  # (T, d), episode = position in self.episodes
        return self.column(key)[self.episode_starts[episode] : self.episode_starts[episode + 1]]

    def timestamps(self, episode: int) -> np.ndarray:  # (T,) seconds from the episode start
        if "timestamp" in self._columns:
            return self.episode_column(episode, "timestamp")[:, 0].astype(np.float64)
        return np.arange(self.episodes[episode].length) / self.meta.fps

    def frames(self, episode: int, camera: str, frame_ids: np.ndarray) -> np.ndarray:  # -> (N, h, w, 3) uint8
        """Frames `frame_ids` (positions inside the episode) of one camera, decoded in one call."""
        ep = self.episodes[episode]
        dtype = self.meta.features.get(camera, {}).get("dtype")
        if dtype == "video":
            video = ep.videos[camera]
            ts = video.from_timestamp + self.timestamps(episode)[frame_ids]
            return self._decoders.frames_at(video.path, ts.tolist())
        if dtype == "image":
            cells = self._image_columns.get(ep.data_path)[camera]
            rows = ep.row_start + np.asarray(frame_ids)
            return np.stack([_decode_png(cells[int(r)].as_py()) for r in rows])
        raise DataError(self.root, f"{camera!r} is not a video or image feature", f"cameras: {self.meta.video_keys + self.meta.image_keys}")

    def _open_image_file(self, path: Path) -> dict[str, pa.ChunkedArray]:
        return {k: c for k, c in zip(self.meta.image_keys, pq.read_table(path, columns=self.meta.image_keys).columns, strict=True)}

    @property
    def decoder_cache(self) -> DecoderCache:
        return self._decoders


def read_stats_json(root: Path) -> dict:
    path = root / "meta" / "stats.json"
    return json.loads(path.read_text()) if path.is_file() else {}
