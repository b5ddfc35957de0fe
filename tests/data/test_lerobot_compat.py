"""The v3.0 files our writer makes carry what LeRobot's own reader (0.4 - 0.6) looks up, and nothing of v2.x.

The key lists are LeRobot's: `create_empty_dataset_info` (info.json) and the columns its
`LeRobotDataset` reads from `meta/episodes/*.parquet`. benchmarks/lerobot_loader.py reads
such a dataset with LeRobot itself.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

LEROBOT_V30_INFO_KEYS = {
    "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
    "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path", "features",
}
LEROBOT_V30_EPISODE_COLUMNS = {
    "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
    "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index",
}
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")


def test_v30_info_has_exactly_lerobots_keys(dataset_root):
    info = json.loads((dataset_root("v3.0", "h264") / "meta/info.json").read_text())
    assert set(info) == LEROBOT_V30_INFO_KEYS  # v2.x's total_videos / total_chunks make LeRobot 0.5+ warn
    assert info["codebase_version"] == "v3.0"
    video = info["features"]["observation.images.image"]
    assert video["dtype"] == "video" and video["info"]["video.fps"] == info["fps"]


def test_v21_info_keeps_its_counters(dataset_root):
    info = json.loads((dataset_root("v2.1", "h264") / "meta/info.json").read_text())
    assert info["total_videos"] == 2 * info["total_episodes"] and info["total_chunks"] == 1


def test_v30_episodes_parquet_has_the_columns_lerobot_reads(dataset_root):
    root = dataset_root("v3.0", "h264")
    info = json.loads((root / "meta/info.json").read_text())
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    cameras = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    wanted = LEROBOT_V30_EPISODE_COLUMNS | {f"videos/{c}/{col}" for c in cameras for col in VIDEO_COLUMNS}
    assert wanted <= set(episodes[0])
    # each episode's rows and video span are contiguous and line up with its length
    for ep in episodes:
        assert ep["dataset_to_index"] - ep["dataset_from_index"] == ep["length"]
        for c in cameras:
            span = ep[f"videos/{c}/to_timestamp"] - ep[f"videos/{c}/from_timestamp"]
            assert abs(span - ep["length"] / info["fps"]) < 1e-6
