"""Video decoding behind one interface: PyAV or torchcodec, with a per-process LRU of open files.

One call decodes every timestamp a sample needs from one file (t and t+k), so a
sample costs one seek per file, not one open + seek per frame. Frames come back as
uint8 `(N, h, w, 3)` numpy arrays in the order the timestamps were asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from sagrflow.data.cache import ProcessLocalLRU
from sagrflow.data.errors import DataError

BACKENDS = ("pyav", "torchcodec")
# Past this many frames ahead, seeking to the previous keyframe beats decoding forward.
_FORWARD_WINDOW_FRAMES = 16


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


class PyAVReader:
    """Frame-accurate random access with PyAV: seek to the keyframe before, decode forward."""

    def __init__(self, path: str | Path, tolerance_s: float = 1e-3):
        import av

        self.path = Path(path)
        self.tolerance_s = tolerance_s
        _check_file(self.path)
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as exc:
            raise DataError(self.path, f"cannot open video ({exc})", "the mp4 is truncated or corrupt; re-encode it") from exc
        self._time_base = float(self._stream.time_base)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._frame_s = 1.0 / float(rate) if rate else 1.0 / 30.0
        self._frames = None  # live decode iterator
        self._last_time = None  # time of the last frame the iterator returned
        self._last_frame = None

    def _seek(self, target_s: float) -> None:
        import av

        offset = max(int(target_s / self._time_base), 0)
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise DataError(self.path, f"seek to {target_s:.4f}s failed ({exc})") from exc
        self._frames = self._container.decode(self._stream)
        self._last_time = self._last_frame = None

    def _needs_seek(self, target_s: float) -> bool:
        if self._frames is None or self._last_time is None:
            return True
        already_passed = target_s < self._last_time + self.tolerance_s
        far_ahead = target_s - self._last_time > _FORWARD_WINDOW_FRAMES * self._frame_s
        return already_passed or far_ahead

    def _decode_one(self, target_s: float) -> np.ndarray:
        import av

        if self._last_frame is not None and abs(self._last_time - target_s) <= self.tolerance_s:
            return self._last_frame.to_ndarray(format="rgb24")
        if self._needs_seek(target_s):
            self._seek(target_s)
        last_seen = None
        try:
            for frame in self._frames:
                if frame.pts is None:
                    continue
                t = frame.pts * self._time_base
                self._last_time, self._last_frame = t, frame
                last_seen = t
                if t < target_s - self.tolerance_s:
                    continue
                if t <= target_s + self.tolerance_s:
                    return frame.to_ndarray(format="rgb24")
                raise DataError(
                    self.path,
                    f"no frame at timestamp {target_s:.4f}s (next frame is at {t:.4f}s)",
                    "timestamps in the parquet disagree with the video; re-encode or fix the timestamp column",
                )
        except av.error.FFmpegError as exc:
            raise DataError(self.path, f"decoding failed near {target_s:.4f}s ({exc})", "the mp4 is truncated or corrupt") from exc
        self._frames = self._last_time = self._last_frame = None
        where = f"last frame at {last_seen:.4f}s" if last_seen is not None else "no frame after the seek point"
        raise DataError(self.path, f"timestamp {target_s:.4f}s is outside the video ({where})")

    def frames_at(self, timestamps: Sequence[float]) -> np.ndarray:
        order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
        decoded: dict[float, np.ndarray] = {}
        for i in order:
            ts = float(timestamps[i])
            if ts not in decoded:
                decoded[ts] = self._decode_one(ts)
        return np.stack([decoded[float(ts)] for ts in timestamps])

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
            batch = self._decoder.get_frames_played_at(seconds=[float(t) for t in timestamps])
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


def open_video(path: str | Path, backend: str = "pyav") -> VideoReader:
    if backend == "pyav":
        return PyAVReader(path)
    if backend == "torchcodec":
        return TorchCodecReader(path)
    raise DataError("datasets.vla_data.video_backend", f"unknown video backend {backend!r}", f"use one of {BACKENDS}")


def _close(reader: VideoReader) -> None:
    reader.close()


class DecoderCache:
    """A bounded LRU of open video readers, one per process (see `ProcessLocalLRU`)."""

    def __init__(self, backend: str = "pyav", capacity: int = 16):
        if backend not in BACKENDS:
            raise DataError("datasets.vla_data.video_backend", f"unknown video backend {backend!r}", f"use one of {BACKENDS}")
        self.backend = backend
        self._lru = ProcessLocalLRU(partial(open_video, backend=backend), capacity, _close)

    @property
    def opened(self) -> int:
        return self._lru.opened

    def __len__(self) -> int:
        return len(self._lru)

    def frames_at(self, path: str | Path, timestamps: Sequence[float]) -> np.ndarray:  # (N, h, w, 3) uint8
        return self._lru.get(path).frames_at(timestamps)
