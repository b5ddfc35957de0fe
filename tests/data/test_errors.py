"""Each kind of bad input gets one clear error naming the file and what is wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sagrflow.data.dataset import TemporalDataset
from sagrflow.data.embodiments import get_embodiment
from sagrflow.data.errors import DataError
from sagrflow.data.lerobot.meta import load_meta
from sagrflow.data.lerobot.reader import LeRobotReader
from sagrflow.data.mixtures import MixtureDataset


@pytest.fixture
def copy_of(dataset_root, tmp_path):
    def make(version="v2.1", codec="h264"):
        dst = tmp_path / "copy"
        shutil.copytree(dataset_root(version, codec), dst, ignore=shutil.ignore_patterns(".sagrflow"))
        return dst

    return make


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _edit_parquet(path, column, fn):
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, column, fn(table.column(column)))
    pq.write_table(table, path)


def test_folder_without_info_json(tmp_path):
    (tmp_path / "meta").mkdir()
    with pytest.raises(DataError, match=r"has no meta/info.json") as err:
        load_meta(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_feature_missing_from_parquet(copy_of):
    root = copy_of()
    _edit_json(root / "meta" / "info.json",
               lambda d: d["features"].update({"observation.extra": {"dtype": "float32", "shape": [3]}}))
    with pytest.raises(DataError, match=r"episode_000000.parquet: lacks columns \['observation.extra'\]"):
        LeRobotReader(root)


def test_feature_width_disagrees_with_parquet(copy_of):
    root = copy_of()
    _edit_json(root / "meta" / "info.json", lambda d: d["features"]["observation.state"].update(shape=[9]))
    with pytest.raises(DataError, match=r"episode_000000.parquet: column 'observation.state' .* width 9"):
        LeRobotReader(root)


def test_missing_mp4(copy_of, embodiment):
    root = copy_of()
    video = root / "videos/chunk-000/observation.images.wrist_image/episode_000001.mp4"
    video.unlink()
    ds = TemporalDataset(root, embodiment)
    with pytest.raises(DataError, match="episode_000001.mp4: video file is missing"):
        ds.sample(1, 0)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_truncated_mp4(copy_of, embodiment, version):
    root = copy_of(version, "h264")
    video = sorted(root.glob("videos/**/*.mp4"))[0]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    ds = TemporalDataset(root, embodiment)
    with pytest.raises(DataError, match=rf"{video.name}: (cannot open video|decoding failed|timestamp .* outside)"):
        for ep in range(len(ds.reader.episodes)):
            ds.sample(ep, ds.reader.episodes[ep].length - 1)


def test_episodes_dropped_from_the_metadata_alone_are_not_read_from_a_stale_index(copy_of):
    root = copy_of("v3.0", None)
    LeRobotReader(root)  # writes .sagrflow/index.npz
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)  # episode 0 gone from the list; the data files unchanged
    # the rows of every later episode moved: the index is rebuilt and the mismatch named, not read stale
    with pytest.raises(DataError, match="rows for episode 1 hold episode_index 0"):
        LeRobotReader(root)


def test_a_v2_episode_file_with_rows_the_metadata_does_not_count(copy_of):
    root = copy_of("v2.1", None)
    path = sorted((root / "data").rglob("episode_*.parquet"))[0]
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(table.num_rows - 1)]), path)  # one row more
    with pytest.raises(DataError, match=rf"episode_000000.parquet: holds {table.num_rows + 1} rows but "
                                        rf"meta/episodes.jsonl gives episode 0 a length of {table.num_rows}"):
        LeRobotReader(root)


def test_modality_slice_out_of_range(copy_of):
    root = copy_of()
    _edit_json(root / "meta" / "modality.json", lambda d: d["state"]["gripper"].update(start=7, end=9))
    with pytest.raises(DataError, match=r"modality.json: state.gripper slice \[7:9\] is out of range .* width 8"):
        load_meta(root)


def test_unknown_mix_and_robot_type(dataset_root):
    with pytest.raises(DataError, match=r"unknown data mix 'libero_al'.*libero_all"):
        MixtureDataset("libero_al", "/nonexistent")
    with pytest.raises(DataError, match=r"robot type 'franka'.*libero_franka"):
        MixtureDataset([{"path": str(dataset_root()), "robot_type": "franka"}], "/")
    with pytest.raises(DataError, match=r"data_mix\[0\]: unknown keys \['weigth'\]"):
        MixtureDataset([{"path": "x", "weigth": 2}], "/")


def test_a_mix_of_state_widths_is_refused_when_built(dataset_root, monkeypatch):
    from dataclasses import replace

    from sagrflow.data import embodiments

    def franka7():  # libero_franka without its padding dim: 7 state dims against 8
        e = get_embodiment("libero_franka")
        return replace(e, robot_type="franka7", state_keys=tuple(k for k in e.state_keys if k != "state.pad"),
                       normalization={k: v for k, v in e.normalization.items() if k != "state.pad"})

    monkeypatch.setitem(embodiments._REGISTRY, "franka7", franka7)
    mix = [{"path": str(dataset_root("v2.1", None)), "robot_type": "libero_franka"},
           {"path": str(dataset_root("v2.1", None)), "robot_type": "franka7"}]
    with pytest.raises(DataError, match="state dim 7 differs from the mix's first dataset's 8"):
        MixtureDataset(mix, "/", image_size=(32, 32), include_state=True)
    MixtureDataset(mix, "/", image_size=(32, 32), include_state=False)  # without state they batch


def test_an_embodiment_without_state_keys_is_named(dataset_root, embodiment):
    from dataclasses import replace

    stateless = replace(embodiment, state_keys=(),
                        normalization={k: v for k, v in embodiment.normalization.items() if k.startswith("action")})
    with pytest.raises(DataError, match="declares no state keys"):
        TemporalDataset(dataset_root("v2.1", None), stateless)


def test_timestamp_outside_the_video(copy_of, embodiment):
    root = copy_of("v2.1", "h264")
    path = root / "data/chunk-000/episode_000001.parquet"
    _edit_parquet(path, "timestamp", lambda col: pa.array(col.to_numpy() + np.float32(5.0)))
    ds = TemporalDataset(root, embodiment)
    with pytest.raises(DataError, match=r"episode_000001.mp4: timestamp 5.0000s is outside the video"):
        ds.sample(1, 0)


@pytest.mark.parametrize("column", ["action", "observation.state"])
def test_nan_in_state_or_action(copy_of, embodiment, column):
    root = copy_of("v2.1", None)
    path = root / "data/chunk-000/episode_000004.parquet"

    def poison(col):
        values = np.stack(col.to_pylist()).astype(np.float32)
        values[3, 2] = np.nan
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])

    _edit_parquet(path, column, poison)
    with pytest.raises(DataError, match=rf"episode_000004.parquet: .*{column}.* NaN/inf: 1 rows, first at episode 4 frame 3"):
        TemporalDataset(root, embodiment)


def test_episode_shorter_than_k_is_valid_data(dataset_root, embodiment):
    ds = TemporalDataset(dataset_root(), embodiment)  # LENGTHS holds a 3-frame episode
    assert ds.sample(3, 2)["valid_tk"] == 0.0


def test_bad_embodiment_values():
    with pytest.raises(DataError, match="observation_indices .* must contain 0"):
        get_embodiment("libero_franka", observation_indices=(7,))
    with pytest.raises(DataError, match="action_indices must be 0..H-1"):
        get_embodiment("libero_franka", action_indices=(1, 2, 3))
