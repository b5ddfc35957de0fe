"""Random access to mp4 frames by packet table: no open container, decoders shared across files.

Opening an mp4 with PyAV builds a container (moov parse, stream probing), a decoder and
a yuv -> rgb context, about as much work as decoding the frames a sample needs. In a
LIBERO-sized v2.1 dataset (one mp4 per episode and camera: ~3400 files) random sampling
would pay that at nearly every sample, because no bounded cache of *open* files holds
them all. A seek needs far less: the byte position, size, timestamp and keyframe flag
of every packet, which the container keeps in its own index (`stream.index_entries`,
read from the moov box at open, without reading the frames). That table is read once
per file and process and kept (~40 bytes per frame, so every file of a LIBERO-sized
dataset fits), and saved next to the dataset's other derived files (`cached_packet_table`),
so a new worker or a later run loads it instead of opening the mp4 (~1 ms per file). A request then reads the packets from the keyframe on with one `pread`
and feeds them to a decoder shared by all files of one codec setup (codec, extradata,
size), flushed at each seek.

Legend: P packets in the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagrflow.data.cache import atomic_write_bytes
from sagrflow.data.errors import DataError
from sagrflow.data.seek import SeekingReader


@dataclass(frozen=True, eq=False)
class PacketTable:
    path: Path
    pos: np.ndarray  # (P,) int64 byte offset, decode order
    size: np.ndarray  # (P,) int64 bytes
    pts: np.ndarray  # (P,) int64 in time_base units; = decode time, as the table is only kept without reordering
    keyframe: np.ndarray  # (P,) bool
    time_base: float
    frame_s: float
    codec_key: tuple  # (codec name, extradata, width, height, pixel format): files that can share a decoder


def read_packet_table(path: Path) -> PacketTable | None:
    """The container index of `path`'s video stream, or None when it cannot drive decoding on its own
    (no index, frames reordered (B-frames), edit-list discards, or a first packet that disagrees)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            cc = stream.codec_context
            entries = list(getattr(stream, "index_entries", None) or [])  # absent in older PyAV: container path
            if not entries or cc.has_b_frames or any(e.is_discard for e in entries) or not entries[0].is_keyframe:
                return None
            first = next(iter(container.demux(stream)), None)
            if first is None or first.pos != entries[0].pos or first.pts != entries[0].timestamp:
                return None
            pts = np.array([e.timestamp for e in entries], dtype=np.int64)
            if np.any(np.diff(pts) <= 0):
                return None
            rate = stream.average_rate or stream.guessed_rate
            fmt = cc.format.name if cc.format is not None else None
            return PacketTable(
                path=path,
                pos=np.array([e.pos for e in entries], dtype=np.int64),
                size=np.array([e.size for e in entries], dtype=np.int64),
                pts=pts,
                keyframe=np.array([e.is_keyframe for e in entries], dtype=bool),
                time_base=float(stream.time_base),
                frame_s=1.0 / float(rate) if rate else 1.0 / 30.0,
                codec_key=(cc.name, bytes(cc.extradata or b""), cc.width, cc.height, fmt),
            )
    except (av.error.FFmpegError, IndexError):
        return None  # the container reader reports what is wrong with the file


_TABLE_VERSION = 1
# readers besides a shared decoder's owner that keep their last decoded frame: the cameras of an
# episode alternate on one decoder, and a chain's next sample asks for the frames its t+k read
KEEP_LAST_FRAMES = 8


def cached_packet_table(path: Path, cache_dir: Path | None) -> PacketTable | None:
    """`read_packet_table(path)`, through a file in `cache_dir` keyed by the mp4's path, size and
    mtime (a rewritten video gets a new entry). "No usable table" is cached too."""
    if cache_dir is None:
        return read_packet_table(path)
    st = path.stat()
    key = hashlib.sha1(f"{_TABLE_VERSION}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    entry = cache_dir / f"{key}.npz"
    try:
        with np.load(entry, allow_pickle=False) as z:
            if not bool(z["usable"]):
                return None
            name, fmt = (str(v) for v in z["names"])
            width, height = (int(v) for v in z["size_wh"])
            return PacketTable(path, z["pos"], z["size"], z["pts"], z["keyframe"], float(z["time_base"]),
                               float(z["frame_s"]), (name, z["extradata"].tobytes(), width, height, fmt or None))
    except (OSError, KeyError, ValueError):  # absent or unreadable: read the mp4 and (re)write the entry
        pass
    table = read_packet_table(path)
    fields: dict[str, np.ndarray] = {"usable": np.array(table is not None)}
    if table is not None:
        name, extradata, width, height, fmt = table.codec_key
        fields.update(pos=table.pos, size=table.size, pts=table.pts, keyframe=table.keyframe,
                      time_base=np.array(table.time_base), frame_s=np.array(table.frame_s),
                      names=np.array([name, fmt or ""]), size_wh=np.array([width, height]),
                      extradata=np.frombuffer(extradata, dtype=np.uint8))
    buf = io.BytesIO()
    np.savez(buf, **fields)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(entry, buf.getvalue())
    except OSError:
        pass  # a read-only cache location only costs the next process the mp4 open
    return table


class SharedDecoder:
    """One decoder (and yuv -> rgb context) for every file of one codec setup; the reader that
    seeked last owns its state."""

    def __init__(self, codec_key: tuple):
        import av
        from av.video.reformatter import VideoReformatter

        name, extradata, width, height, _ = codec_key
        self.codec = av.CodecContext.create(name, "r")
        if extradata:
            self.codec.extradata = extradata
        self.codec.width, self.codec.height = width, height
        self.codec.thread_count = 1  # DataLoader workers are the parallelism
        self.codec.open()
        self.reformatter = VideoReformatter()
        self.owner: PacketReader | None = None
        self._recent: deque[PacketReader] = deque()  # readers that owned it last, newest last

    def claim(self, owner: PacketReader) -> None:
        previous = self.owner
        if previous is not None and previous is not owner:
            previous.suspend()  # only the owner can decode on: its iterator (packet bytes) goes
            self._recent.append(previous)  # its last frame stays while it is among the recent few
        if owner in self._recent:
            self._recent.remove(owner)
        while len(self._recent) > KEEP_LAST_FRAMES:
            self._recent.popleft().release()
        self.codec.flush_buffers()
        self.owner = owner

    def close(self) -> None:
        self.owner = None


class PacketReader(SeekingReader):
    """Frame-exact random access to one file through its `PacketTable` and a `SharedDecoder`.

    `decoder_for(codec_key)` returns the process's shared decoder for that setup.
    """

    def __init__(self, table: PacketTable, decoder_for, tolerance_s: float = 1e-3):
        self.path = table.path
        self.table = table
        self.tolerance_s = tolerance_s
        self._decoder_for = decoder_for
        self._time_base = table.time_base
        self._times = table.pts * table.time_base  # (P,) s
        self._keyframe_ids = np.flatnonzero(table.keyframe)
        self._keyframes = self._times[self._keyframe_ids]
        self._frame_s = table.frame_s
        self._decoder: SharedDecoder | None = None
        self._init_position()

    @property
    def _reformatter(self):
        return self._decoder.reformatter

    def suspend(self) -> None:
        """Another reader took the shared decoder: drop the paused iterator (it holds a keyframe
        group's packet bytes); keep the last frame, which the next sample of a chain often asks for."""
        self._frames = None

    def release(self) -> None:
        """Drop the last frame too. A worker keeps thousands of readers (their tables, ~33 bytes per
        frame); only the shared decoder's owner and its KEEP_LAST_FRAMES predecessors hold more."""
        self._init_position()

    def _iterator_alive(self) -> bool:
        return self._frames is not None and self._decoder is not None and self._decoder.owner is self

    def _seek(self, target_s: float) -> None:
        at = int(np.searchsorted(self._times, target_s + self.tolerance_s, side="right")) - 1
        start = int(self._keyframe_ids[max(np.searchsorted(self._keyframe_ids, at, side="right") - 1, 0)])
        self._decoder = self._decoder_for(self.table.codec_key)
        self._decoder.claim(self)
        self._init_position()
        self._frames = self._decode_from(start)

    def _read(self, first: int, end: int) -> tuple[bytes, int]:  # bytes of packets first..end-1, their base offset
        t = self.table
        base = int(t.pos[first:end].min())
        n = int((t.pos[first:end] + t.size[first:end]).max()) - base
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                data = os.pread(fd, n, base)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DataError(self.path, f"cannot read video packets ({exc})") from exc
        if len(data) < n:
            raise DataError(self.path, f"video file ends at byte {base + len(data)}, its index needs {base + n}",
                            "the mp4 is truncated; re-encode it")
        return data, base

    def _decode_from(self, i: int) -> Iterator[tuple[float, object]]:
        """(time, frame) from packet i on, one keyframe group read at a time; drains the decoder at the end."""
        import av

        t, codec, keys = self.table, self._decoder.codec, self._keyframe_ids
        while i < len(t.pos):
            end = int(keys[np.searchsorted(keys, i, side="right")]) if keys[-1] > i else len(t.pos)
            data, base = self._read(i, end)
            for p in range(i, end):
                off = int(t.pos[p]) - base
                packet = av.Packet(data[off : off + int(t.size[p])])
                packet.pts = packet.dts = int(t.pts[p])
                yield from self._timed(codec.decode(packet))
            i = end
        yield from self._timed(codec.decode(None))

    def close(self) -> None:
        self._decoder = self._frames = None
