"""Frame-exact random access over a stream of decoded frames, shared by both PyAV readers.

A reader positions a decode iterator at a keyframe (`_seek`) and walks it forward to the
requested timestamp. A later request continues from where the iterator stands when no
keyframe lies in between (decoding on is then never more work than a seek), and seeks
otherwise. Frames come back as uint8 `(N, h, w, 3)` arrays in request order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sagrflow.data.errors import DataError

# Without a keyframe index, decoding on beats a seek only for targets this close ahead.
_UNINDEXED_FORWARD_FRAMES = 2


class SeekingReader:
    """Subclasses set `_keyframes` (sorted keyframe times in s, or None when unknown), `_frame_s`,
    `_time_base` (s per pts unit), `_reformatter`, and implement `_seek` (point `_frames` at the keyframe before a time)."""

    path: Path
    tolerance_s: float
    _keyframes: np.ndarray | None
    _frame_s: float
    _time_base: float

    def _init_position(self) -> None:
        self._frames: Iterator | None = None  # live decode iterator
        self._last_time = None  # time of the last frame the iterator returned
        self._last_frame = None

    def _seek(self, target_s: float) -> None:
        raise NotImplementedError

    def _iterator_alive(self) -> bool:
        return self._frames is not None

    def _keyframe_before(self, target_s: float) -> float:
        i = np.searchsorted(self._keyframes, target_s + self.tolerance_s, side="right") - 1
        return float(self._keyframes[max(i, 0)])

    def _continue_forward(self, target_s: float) -> bool:
        """Is decoding on from the current position no worse than seeking to `target_s`?"""
        if not self._iterator_alive() or self._last_time is None or target_s <= self._last_time + self.tolerance_s:
            return False
        if self._keyframes is None:
            return target_s - self._last_time <= _UNINDEXED_FORWARD_FRAMES * self._frame_s + self.tolerance_s
        return self._keyframe_before(target_s) <= self._last_time + self.tolerance_s

    def _timed(self, frames) -> Iterator[tuple[float, object]]:
        """Decoded frames -> (time in s, frame), skipping frames without a timestamp."""
        for frame in frames:
            if frame.pts is not None:
                yield frame.pts * self._time_base, frame

    def _to_rgb(self, frame) -> np.ndarray:  # -> (h, w, 3) uint8
        # swscale's own thread pool (threads=0: one per core) costs 2-3x on a busy machine:
        # the DataLoader workers are the parallelism, as for the decoders
        try:
            return self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        except TypeError:  # older PyAV: no threads argument (its sws_scale runs on this thread anyway)
            return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _decode_one(self, target_s: float) -> np.ndarray:
        import av

        if self._last_frame is not None and abs(self._last_time - target_s) <= self.tolerance_s:
            return self._to_rgb(self._last_frame)
        if not self._continue_forward(target_s):
            self._seek(target_s if self._keyframes is None else self._keyframe_before(target_s))
        last_seen = None
        try:
            for t, frame in self._frames:
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
        self._init_position()
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
