from __future__ import annotations

import json

import numpy as np
import pytest

from sagrflow.data.errors import DataError
from sagrflow.data.lerobot.reader import LeRobotReader
from sagrflow.data.lerobot.writer import Episode, LeRobotWriter
from sagrflow.data.synthetic import decode_id_image, libero_spec, synthetic_episode
from sagrflow.data.video import DecoderCache

from .conftest import FORMATS, format_id


@pytest.mark.parametrize("fmt", FORMATS, ids=format_id)
def test_numeric_columns_read_back_identical(tmp_path, fmt):
    spec = libero_spec(version=fmt[0], video_codec=fmt[1], episodes_per_file=2)
    rng = np.random.default_rng(3)
    episodes = [synthetic_episode(i, n, spec, rng) for i, n in enumerate([9, 4, 11])]
    with LeRobotWriter(tmp_path / "ds", spec) as w:
        for ep in episodes:
            w.add_episode(ep)
    reader = LeRobotReader(tmp_path / "ds")
    assert reader.meta.version == fmt[0]
    for i, ep in enumerate(episodes):
        np.testing.assert_array_equal(reader.episode_column(i, "action"), ep.action)
        np.testing.assert_array_equal(reader.episode_column(i, "observation.state"), ep.state)
        frames = reader.frames(i, "observation.images.image", np.arange(ep.length))
        if fmt[1] is None:  # PNG in the parquet: exact
            np.testing.assert_array_equal(frames, ep.images["observation.images.image"])
        assert [decode_id_image(f)[:2] for f in frames] == [(i, t) for t in range(ep.length)]
    assert reader.meta.tasks == {0: "task 0", 1: "task 1", 2: "task 2"}
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "q01", "q99", "count"}


def test_index_is_cached_and_invalidated(dataset_root, tmp_path):
    import shutil

    root = shutil.copytree(dataset_root("v2.1", None), tmp_path / "ds")
    LeRobotReader(root)
    cache = root / ".sagrflow" / "index.npz"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    LeRobotReader(root)
    assert cache.stat().st_mtime_ns == stamp  # reused, not rebuilt
    (root / "data/chunk-000/episode_000000.parquet").touch()
    LeRobotReader(root)
    assert cache.stat().st_mtime_ns != stamp


def test_writer_rejects_bad_episodes(tmp_path):
    spec = libero_spec()
    rng = np.random.default_rng(0)
    ep = synthetic_episode(0, 5, spec, rng)
    with LeRobotWriter(tmp_path / "a", spec) as w:
        bad = Episode(ep.task, ep.state, ep.action.copy(), ep.images)
        bad.action[2, 1] = np.inf
        with pytest.raises(DataError, match="action holds non-finite"):
            w.add_episode(bad)
        with pytest.raises(DataError, match="cameras"):
            w.add_episode(Episode(ep.task, ep.state, ep.action, {"observation.images.image": ep.images["observation.images.image"]}))
        w.add_episode(ep)
    with pytest.raises(DataError, match="not empty"):
        LeRobotWriter(tmp_path / "a", spec)


def test_decoder_cache_is_bounded_and_reuses_open_files(dataset_root):
    reader = LeRobotReader(dataset_root("v2.1", "h264"))
    paths = [ep.videos["observation.images.image"].path for ep in reader.episodes]
    for index_capacity in (0, 2):  # open readers only; packet tables (which hold no file open)
        cache = DecoderCache("pyav", capacity=2, index_capacity=index_capacity)
        for p in paths:
            cache.frames_at(p, [0.0, 0.2])
            cache.frames_at(p, [0.1])
        assert len(cache) == (2 if index_capacity == 0 else 0)
        assert cache.opened == len(paths)  # each file opened once while it stayed in the cache


def test_one_call_decodes_several_timestamps_in_request_order(dataset_root):
    reader = LeRobotReader(dataset_root("v3.0", "av1"))
    ep = reader.episodes[1]  # starts inside the shared mp4
    video = ep.videos["observation.images.image"]
    assert video.from_timestamp > 0
    frames = DecoderCache().frames_at(video.path, [video.from_timestamp + 0.7, video.from_timestamp, video.from_timestamp + 0.7])
    assert [decode_id_image(f)[:2] for f in frames] == [(1, 7), (1, 0), (1, 7)]


def test_torchcodec_backend_matches_pyav(dataset_root):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec (and ffmpeg's libraries) not installed")
    reader = LeRobotReader(dataset_root("v2.1", "h264"))
    path = reader.episodes[0].videos["observation.images.image"].path
    ts = [0.0, float(np.float32(0.7)), 1.9]  # float32 timestamps as parquet stores them
    a = DecoderCache("pyav").frames_at(path, ts)
    b = DecoderCache("torchcodec").frames_at(path, ts)
    assert [decode_id_image(f) for f in a] == [decode_id_image(f) for f in b]


def test_unknown_backend():
    with pytest.raises(DataError, match="unknown video backend 'opencv'"):
        DecoderCache("opencv")


@pytest.mark.parametrize("index_limit_bytes", [0, 64 << 20], ids=["unindexed", "keyframe-index"])
def test_pyav_reader_is_frame_exact_with_and_without_a_keyframe_index(dataset_root, index_limit_bytes):
    from sagrflow.data.video import PyAVReader

    reader = LeRobotReader(dataset_root("v3.0", "h264"))
    path = reader.episodes[0].videos["observation.images.image"].path
    eps = [e for e in reader.episodes if e.videos["observation.images.image"].path == path]
    video = PyAVReader(path, index_limit_bytes=index_limit_bytes)
    assert (video._keyframes is None) == (index_limit_bytes == 0)
    rng = np.random.default_rng(0)
    for _ in range(40):  # random (t, t+k) pairs, as samples ask for them, in both orders
        e = eps[rng.integers(len(eps))]
        start = e.videos["observation.images.image"].from_timestamp
        t = int(rng.integers(e.length))
        tk = min(t + int(rng.integers(1, 8)), e.length - 1)
        got = video.frames_at([start + tk / 10, start + t / 10])
        assert [decode_id_image(f)[:2] for f in got] == [(e.index, tk), (e.index, t)]


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f[1]], ids=format_id)
def test_packet_reader_matches_the_container_reader_pixel_for_pixel(dataset_root, fmt):
    from sagrflow.data.packets import PacketReader, SharedDecoder, read_packet_table
    from sagrflow.data.video import PyAVReader

    reader = LeRobotReader(dataset_root(*fmt))
    path = reader.episodes[0].videos["observation.images.image"].path
    eps = [e for e in reader.episodes if e.videos["observation.images.image"].path == path]
    table = read_packet_table(path)
    assert table is not None and table.keyframe[0]
    decoders = {}
    packets = PacketReader(table, lambda key: decoders.setdefault(key, SharedDecoder(key)))
    container = PyAVReader(path)
    rng = np.random.default_rng(1)
    for _ in range(30):  # random (t, t+k) pairs in both orders, and repeats
        e = eps[rng.integers(len(eps))]
        start = e.videos["observation.images.image"].from_timestamp
        t = int(rng.integers(e.length))
        tk = min(t + int(rng.integers(0, 8)), e.length - 1)
        ts = [start + tk / 10, start + t / 10]
        got = packets.frames_at(ts)
        assert [decode_id_image(f)[:2] for f in got] == [(e.index, tk), (e.index, t)]
        np.testing.assert_array_equal(got, container.frames_at(ts))
    with pytest.raises(DataError, match="outside the video"):
        packets.frames_at([start + e.length])
    assert decode_id_image(packets.frames_at([start])[0])[:2] == (e.index, 0)  # the drained decoder is usable again


def test_files_share_one_decoder_and_interleaved_reads_stay_exact(dataset_root, monkeypatch):
    from sagrflow.data import packets

    reader = LeRobotReader(dataset_root("v2.1", "av1"))
    cache = DecoderCache("pyav")
    cams = ["observation.images.image", "observation.images.wrist_image"]
    for ep, cam, t in [(0, 0, 5), (4, 1, 0), (0, 1, 1), (2, 0, 6), (0, 0, 6), (0, 0, 2)]:  # one decoder, files alternating
        got = cache.frames_at(reader.episodes[ep].videos[cams[cam]].path, [t / 10, 0.2])
        assert [decode_id_image(f) for f in got] == [(ep, t, cam), (ep, 2, cam)]
    assert len(cache._decoders) == 1
    # only the decoder's owner keeps a decode iterator (a keyframe group's packets), and only it and its
    # KEEP_LAST_FRAMES predecessors a decoded frame
    (decoder,) = cache._decoders._items.values()
    readers = list(cache._tables._items.values())
    assert [r for r in readers if r._frames is not None] == [decoder.owner]
    monkeypatch.setattr(packets, "KEEP_LAST_FRAMES", 1)
    for ep, cam, t in [(1, 0, 0), (3, 1, 1), (4, 0, 2)]:
        cache.frames_at(reader.episodes[ep].videos[cams[cam]].path, [t / 10])
    readers = list(cache._tables._items.values())
    assert len(readers) > 2 and len([r for r in readers if r._last_frame is not None]) == 2


def test_b_frame_videos_fall_back_to_the_container_reader(tmp_path):
    import av

    from sagrflow.data.packets import read_packet_table
    from sagrflow.data.synthetic import encode_id_image

    path = tmp_path / "bframes.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 8
        stream.codec_context.max_b_frames = 2
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(encode_id_image(0, i, 0, (64, 64)), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert read_packet_table(path) is None  # reordered frames: the index alone cannot say which packet shows when
    cache = DecoderCache("pyav")
    got = cache.frames_at(path, [1.3, 0.4, 1.9])
    assert [decode_id_image(f)[1] for f in got] == [13, 4, 19]
    assert len(cache) == 1


def test_packet_tables_are_kept_on_disk_and_follow_file_changes(dataset_root, tmp_path, monkeypatch):
    import shutil

    from sagrflow.data import packets

    reader = LeRobotReader(dataset_root("v2.1", "h264"))
    src = reader.episodes[3].videos["observation.images.wrist_image"].path
    path = tmp_path / "video.mp4"
    shutil.copy(src, path)
    tables = tmp_path / "tables"
    first = DecoderCache("pyav", table_dir=tables).frames_at(path, [0.0, 0.2])
    assert [decode_id_image(f) for f in first] == [(3, 0, 1), (3, 2, 1)]
    assert len(list(tables.glob("*.npz"))) == 1

    def no_mp4_reads(p):
        raise AssertionError(f"read {p} although its table is cached")

    monkeypatch.setattr(packets, "read_packet_table", no_mp4_reads)
    again = DecoderCache("pyav", table_dir=tables)  # a new process (worker, run) loads the saved table
    assert np.array_equal(again.frames_at(path, [0.0, 0.2]), first)
    assert again._tables.get(path) is not None  # served by the packet reader, not the container fallback
    monkeypatch.undo()

    shutil.copy(reader.episodes[1].videos["observation.images.wrist_image"].path, path)  # the file changes
    changed = DecoderCache("pyav", table_dir=tables).frames_at(path, [0.1])
    assert decode_id_image(changed[0]) == (1, 1, 1)
    assert len(list(tables.glob("*.npz"))) == 2
