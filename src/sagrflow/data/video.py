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
# Without a keyframe index, decoding on beats a seek only for targets this close ahead.
_UNINDEXED_FORWARD_FRAMES = 2


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
    """Frame-accurate random access with PyAV.

    On open, the packets of files up to `index_limit_bytes` are demuxed once (no
    decoding) to learn where the keyframes are. A request then decodes forward from the
    current position when no keyframe lies in between, and otherwise seeks straight to
    the keyframe before the target: the fewest frames decoded either way. Larger files
    (big v3.0 shards) are not read whole at open; there a request decodes forward only
    to the next couple of frames and otherwise seeks. One reformatter is kept per file so the
    yuv -> rgb conversion context is built once, not once per frame.
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
        self._frames = None  # live decode iterator
        self._last_time = None  # time of the last frame the iterator returned
        self._last_frame = None

    def _index_keyframes(self) -> np.ndarray:
        times = [p.pts * self._time_base for p in self._container.demux(self._stream) if p.pts is not None and p.is_keyframe]
        if not times:
            raise IndexError("no keyframe in the video stream")
        return np.sort(np.asarray(times))

    def _keyframe_before(self, target_s: float) -> float:
        i = np.searchsorted(self._keyframes, target_s + self.tolerance_s, side="right") - 1
        return float(self._keyframes[max(i, 0)])

    def _continue_forward(self, target_s: float) -> bool:
        """Is decoding on from the current position no worse than seeking to `target_s`?"""
        if self._frames is None or self._last_time is None or target_s <= self._last_time + self.tolerance_s:
            return False
        if self._keyframes is None:
            return target_s - self._last_time <= _UNINDEXED_FORWARD_FRAMES * self._frame_s + self.tolerance_s
        return self._keyframe_before(target_s) <= self._last_time + self.tolerance_s

    def _seek(self, target_s: float) -> None:
        """Position the decoder at the last keyframe at or before `target_s`."""
        import av

        offset = round((target_s + self.tolerance_s) / self._time_base)
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise DataError(self.path, f"seek to {target_s:.4f}s failed ({exc})") from exc
        self._frames = self._container.decode(self._stream)
        self._last_time = self._last_frame = None

    def _to_rgb(self, frame) -> np.ndarray:  # -> (h, w, 3) uint8
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _decode_one(self, target_s: float) -> np.ndarray:
        import av

        if self._last_frame is not None and abs(self._last_time - target_s) <= self.tolerance_s:
            return self._to_rgb(self._last_frame)
        if not self._continue_forward(target_s):
            self._seek(target_s if self._keyframes is None else self._keyframe_before(target_s))
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
                    return self._to_rgb(frame)
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

    def frames_at(self, timestamps: Sequence[float]) -> np.ndarray:  # -> (N, h, w, 3) uint8
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
    """A bounded LRU of open video readers, one per process (see `ProcessLocalLRU`)."""

    def __init__(self, backend: str = "pyav", capacity: int = 16):
        _reader_class(backend)  # an unknown backend fails here, not in the first worker
        self.backend = backend
        self._lru = ProcessLocalLRU(partial(open_video, backend=backend), capacity, _close)

    @property
    def opened(self) -> int:
        return self._lru.opened

    def __len__(self) -> int:
        return len(self._lru)

    def frames_at(self, path: str | Path, timestamps: Sequence[float]) -> np.ndarray:  # (N, h, w, 3) uint8
        return self._lru.get(path).frames_at(timestamps)
