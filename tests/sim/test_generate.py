"""Demonstration datasets and the `sagrflow sim` commands."""

from __future__ import annotations

import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from sagrflow.cli import main
from sagrflow.data.embodiments import LIBERO_MODALITY
from sagrflow.sim import ScriptedExpert, SimEnv, task_names
from sagrflow.sim.generate import GenerateConfig, generate, record_episode


@pytest.fixture(scope="module")
def spatial_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    (root,) = generate("spatial", out, GenerateConfig(episodes=5, image_size=32, noise=0.1), show_progress=False)
    return root


def test_dataset_has_the_libero_layout(spatial_root):
    assert spatial_root.name == "sim_spatial"
    meta = spatial_root / "meta"
    info = json.loads((meta / "info.json").read_text())
    assert info["robot_type"] == "libero_franka" and info["fps"] == 10 and info["codebase_version"] == "v2.1"
    assert info["total_episodes"] == 5
    features = info["features"]
    for key in ("observation.images.image", "observation.images.wrist_image"):
        assert features[key]["dtype"] == "video" and features[key]["shape"] == [32, 32, 3]
    assert features["observation.state"]["names"] == ["x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"]
    assert features["action"]["names"] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert json.loads((meta / "modality.json").read_text()) == LIBERO_MODALITY
    stats = json.loads((meta / "stats.json").read_text())
    assert set(stats) == {"observation.state", "action"}
    tasks = [json.loads(line)["task"] for line in (meta / "tasks.jsonl").read_text().splitlines()]
    assert sorted(tasks) == sorted(SimEnv(n, render=False).instruction for n in task_names("spatial"))


def test_episodes_replay_the_expert_exactly(spatial_root):
    """Episode e is task e mod n from seed e // n: re-recording it gives the stored states and actions."""
    names = task_names("spatial")
    for e in (0, 4):
        table = pq.read_table(spatial_root / f"data/chunk-000/episode_{e:06d}.parquet")
        env = SimEnv(names[e % len(names)], image_size=32)
        frames = record_episode(env, ScriptedExpert(noise=0.1), seed=e // len(names))
        np.testing.assert_array_equal(np.stack(table["observation.state"].to_numpy(zero_copy_only=False)), frames["state"])
        np.testing.assert_array_equal(np.stack(table["action"].to_numpy(zero_copy_only=False)), frames["action"])
        assert len(frames["action"]) > 8  # longer than one action chunk


def test_suite_all_writes_one_dataset_per_family(tmp_path):
    cfg = GenerateConfig(episodes=1, image_size=16, codec="none", version="v3.0")
    roots = generate("all", tmp_path, cfg, show_progress=False)
    assert [r.name for r in roots] == ["sim_spatial", "sim_object", "sim_goal", "sim_long"]
    assert all((r / "meta" / "info.json").exists() for r in roots)
    with pytest.raises(ValueError, match="not empty"):
        generate("goal", tmp_path, cfg, show_progress=False)
    with pytest.raises(ValueError, match="valid suites"):
        generate("libero_10", tmp_path, cfg, show_progress=False)
    with pytest.raises(ValueError, match="codec"):
        GenerateConfig(codec="vp9")


def test_cli_generate_and_play(tmp_path, capsys):
    assert main(["sim", "generate", "--suite", "goal", "--episodes", "2", "--out", str(tmp_path),
                 "--image-size", "32", "--format", "v3.0"]) == 0
    info = json.loads((tmp_path / "sim_goal" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2

    video = tmp_path / "lift.mp4"
    assert main(["sim", "play", "--task", "goal/lift_blue", "--out", str(video), "--image-size", "32",
                 "--scale", "2"]) == 0
    assert "success" in capsys.readouterr().out
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) > 10 and frames[0].shape[1] >= 2 * 64  # both cameras side by side

    assert main(["sim", "play", "--task", "goal/nope", "--out", str(video)]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert main(["sim", "list"]) == 0
    assert "spatial/left_of_bowl_to_plate" in capsys.readouterr().out
