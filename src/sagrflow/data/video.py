"""Video decoding behind one interface: PyAV or torchcodec, through a per-process `DecoderCache`.

One call decodes every timestamp a sample needs from one file (t and t+k), so a
sample costs one seek per file, not one open + seek per frame; with PyAV and an mp4
whose index can drive decoding, not even an open (see `sagrflow.data.packets`).
Frames come back as uint8 `(N, h, w, 3)` numpy arrays in the order the timestamps
were asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from sagrflow.data.cache import ProcessLocalLRU
from sagrflow.data.errors import DataError
from sagrflow.data.packets import PacketReader, SharedDecoder, cached_packet_table
from sagrflow.data.seek import SeekingReader

BACKENDS = ("pyav", "torchcodec")
# codec setups (codec, extradata, size) a process keeps a decoder for: a mix of a few datasets
# x cameras; each decoder holds a few frames of its size
_SHARED_DECODERS = 16


class VideoReader(Protocol):
    path: Path

    def frames_at(self, timestamps: Sequence[float]) -> np.ndarray:  # (N, h, w, 3) uint8
        ...

    def close(self) -> None: ...


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "video file is missing", "check the dataset's videos/ folder and info.json video_path")
    if path.stat().st_size == 0:
        raise DataError(path, "video file is empty (truncated write?)")


class PyAVReader(SeekingReader):
    """Frame-accurate random access with PyAV, through an open container.

    On open, the packets of files up to `index_limit_bytes` are demuxed once (no
    decoding) to learn where the keyframes are; a request then decodes forward when no
    keyframe lies in between and otherwise seeks straight to the keyframe before the
    target. Larger files (big v3.0 shards) are not read whole at open; there a request
    decodes forward only to the next couple of frames and otherwise seeks. One
    reformatter is kept per file so the yuv -> rgb context is built once, not per frame.
    `DecoderCache` prefers the lighter `PacketReader`; this reader serves the files that
    one cannot (no usable container index, frame reordering).
    """

    def __init__(self, path: str | Path, tolerance_s: float = 1e-3, index_limit_bytes: int = 64 << 20):
        import av
        from av.video.reformatter import VideoReformatter

        self.path = Path(path)
        self.tolerance_s = tolerance_s
        _check_file(self.path)
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
            # DataLoader workers are the parallelism; codec threads on top only add hand-off latency
            self._stream.codec_context.thread_count = 1
            self._time_base = float(self._stream.time_base)
            rate = self._stream.average_rate or self._stream.guessed_rate
            self._frame_s = 1.0 / float(rate) if rate else 1.0 / 30.0
            # sorted keyframe times (s), or None for a file too large to read whole at open
            self._keyframes = self._index_keyframes() if self.path.stat().st_size <= index_limit_bytes else None
        except (av.error.FFmpegError, IndexError) as exc:
            raise DataError(self.path, f"cannot open video ({exc})", "the mp4 is truncated or corrupt; re-encode it") from exc
        self._reformatter = VideoReformatter()
        self._init_position()

    def _index_keyframes(self) -> np.ndarray:
        times = [p.pts * self._time_base for p in self._container.demux(self._stream) if p.pts is not None and p.is_keyframe]
        if not times:
            raise IndexError("no keyframe in the video stream")
        return np.sort(np.asarray(times))

    def _seek(self, target_s: float) -> None:
        """Position the decoder at the last keyframe at or before `target_s`."""
        import av

        offset = round((target_s + self.tolerance_s) / self._time_base)
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise DataError(self.path, f"seek to {target_s:.4f}s failed ({exc})") from exc
        self._init_position()
        self._frames = self._timed(self._container.decode(self._stream))

    def close(self) -> None:
        self._container.close()


class TorchCodecReader:
    """torchcodec's exact-seek decoder; asks for all timestamps in one call."""

    def __init__(self, path: str | Path, tolerance_s: float = 1e-3):
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError as exc:  # also raised when ffmpeg's shared libraries are missing
            raise DataError(
                "datasets.vla_data.video_backend",
                f"torchcodec is not usable here ({exc})",
                "pip install 'sagrflow[torchcodec]' and apt-get install ffmpeg, or use video_backend: pyav",
            ) from exc
        self.path = Path(path)
        self.tolerance_s = tolerance_s
        _check_file(self.path)
        try:
            self._decoder = VideoDecoder(str(self.path), seek_mode="exact", dimension_order="NHWC")
        except (RuntimeError, ValueError) as exc:
            raise DataError(self.path, f"cannot open video ({exc})", "the mp4 is truncated or corrupt; re-encode it") from exc

    def frames_at(self, timestamps: Sequence[float]) -> np.ndarray:
        try:
            # parquet timestamps are often float32 (0.7 -> 0.6999999): nudge inside the frame's display interval
            batch = self._decoder.get_frames_played_at(seconds=[float(t) + self.tolerance_s for t in timestamps])
        except (IndexError, RuntimeError, ValueError) as exc:
            raise DataError(self.path, f"cannot decode timestamps {list(timestamps)} ({exc})") from exc
        pts = batch.pts_seconds.numpy()
        off = np.abs(pts - np.asarray(timestamps))
        if np.any(off > self.tolerance_s):
            bad = int(np.argmax(off))
            raise DataError(
                self.path,
                f"no frame at timestamp {timestamps[bad]:.4f}s (nearest is {pts[bad]:.4f}s)",
                "timestamps in the parquet disagree with the video",
            )
        return batch.data.numpy()

    def close(self) -> None:
        self._decoder = None


_READERS = {"pyav": PyAVReader, "torchcodec": TorchCodecReader}


def _reader_class(backend: str) -> type:
    if backend not in _READERS:
        raise DataError("datasets.vla_data.video_backend", f"unknown video backend {backend!r}", f"use one of {BACKENDS}")
    return _READERS[backend]


def open_video(path: str | Path, backend: str = "pyav") -> VideoReader:
    return _reader_class(backend)(path)


def _close(reader: VideoReader) -> None:
    reader.close()


class DecoderCache:
    """Where a process's frames come from: packet tables first, open readers for the rest.

    With the pyav backend, each file's `PacketTable` is read once per process and kept
    for up to `index_capacity` files (~40 bytes per frame: a LIBERO-sized dataset of
    ~3400 files x ~150 frames holds ~20 MB per worker); decoders are shared by the files
    of one codec setup (see `sagrflow.data.packets`). Files whose container index cannot
    drive decoding, and every file under torchcodec, go through a bounded LRU of
    `capacity` open readers (each holds a file handle and a decoder). `index_capacity=0`
    sends every file through that LRU. `table_dir` keeps the packet tables on disk across
    processes and runs (None: read from each mp4 in each process).
    """

    def __init__(self, backend: str = "pyav", capacity: int = 16, index_capacity: int = 16384,
                 table_dir: Path | None = None):
        _reader_class(backend)  # an unknown backend fails here, not in the first worker
        self.backend = backend
        self.table_dir = table_dir
        self._lru = ProcessLocalLRU(partial(open_video, backend=backend), capacity, _close)
        self._tables = None
        if backend == "pyav" and index_capacity > 0:
            self._tables = ProcessLocalLRU(self._packet_reader, index_capacity, _close)
            self._decoders = ProcessLocalLRU(SharedDecoder, _SHARED_DECODERS, SharedDecoder.close)

    def _packet_reader(self, path: Path) -> PacketReader | None:
        _check_file(path)
        table = cached_packet_table(path, self.table_dir)
        return None if table is None else PacketReader(table, self._decoders.get)

    @property
    def opened(self) -> int:
        """Files opened by this process (to read a packet table, or as an open reader)."""
        return self._lru.opened + (self._tables.opened if self._tables is not None else 0)

    def __len__(self) -> int:
        """Open readers held (packet tables hold no file)."""
        return len(self._lru)

    def frames_at(self, path: str | Path, timestamps: Sequence[float]) -> np.ndarray:  # (N, h, w, 3) uint8
        reader = self._tables.get(path) if self._tables is not None else None
        if reader is None:
            reader = self._lru.get(path)
        return reader.frames_at(timestamps)
