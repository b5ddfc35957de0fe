"""The LIBERO adapter: conventions checked without LIBERO; a smoke run when it is installed."""

from __future__ import annotations

import numpy as np
import pytest

from sagrflow.eval.libero import (
    MAX_STEPS,
    NOOP_ACTION,
    WAIT_STEPS,
    LiberoSuite,
    convert_observation,
    libero_available,
    quat2axisangle,
)


def test_reference_conventions():
    assert MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
    assert WAIT_STEPS == 10 and NOOP_ACTION == (0, 0, 0, 0, 0, 0, -1)
    with pytest.raises(ValueError, match="valid"):
        LiberoSuite("libero_100")


def test_quat2axisangle():
    np.testing.assert_allclose(quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    half = np.pi / 4  # 90 degrees about z
    np.testing.assert_allclose(quat2axisangle(np.array([0, 0, np.sin(half), np.cos(half)])), [0, 0, np.pi / 2])
    np.testing.assert_allclose(quat2axisangle(np.array([1.0, 0, 0, 0])), [np.pi, 0, 0])  # gripper pointing down


def test_observation_is_rotated_180_degrees_and_state_is_8d():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    raw = {"agentview_image": img, "robot0_eye_in_hand_image": img + 1, "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
           "robot0_eef_quat": np.array([1.0, 0, 0, 0]), "robot0_gripper_qpos": np.array([0.04, -0.04])}
    obs = convert_observation(raw)
    np.testing.assert_array_equal(obs["image"], np.rot90(img, 2))
    np.testing.assert_array_equal(obs["wrist_image"], np.rot90(img + 1, 2))
    assert obs["image"].flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(obs["state"], [0.1, 0.2, 0.3, np.pi, 0, 0, 0.04, -0.04], rtol=1e-6)
    assert obs["state"].dtype == np.float32


@pytest.mark.skipif(not libero_available(), reason="LIBERO not installed (pip install 'sagrflow[libero]')")
def test_libero_smoke_few_steps():
    from sagrflow.eval.harness import Job, RolloutConfig, run_jobs
    from sagrflow.eval.policies import ZeroPolicy
    from sagrflow.eval.suites import get_suite

    suite = get_suite("libero_spatial", image_size=64)
    tasks = suite.tasks()
    assert len(tasks) == 10 and all(t.max_steps == 220 for t in tasks)
    [result] = run_jobs(ZeroPolicy(), suite, [Job(tasks[0].name, 0)], RolloutConfig(max_steps=3))
    assert (result.steps, result.queries, result.success) == (3, 1, False)


@pytest.mark.skipif(libero_available(), reason="checks the message shown when LIBERO is missing")
def test_missing_libero_is_a_one_line_error(capsys):
    from sagrflow.cli import main

    assert main(["eval", "--policy", "zero", "--suite", "libero_goal", "--episodes", "1"]) == 2
    assert "pip install 'sagrflow[libero]'" in capsys.readouterr().err
