"""The environment: observation layout, determinism, bad input, and that the future depends on the actions."""

from __future__ import annotations

import numpy as np
import pytest

from sagrflow.sim import (
    ACTION_NAMES,
    STATE_NAMES,
    ScriptedExpert,
    SimConfig,
    SimEnv,
    get_task,
    make,
    task_names,
)
from sagrflow.sim.env import EEF_ORIENTATION, MAX_DELTA
from sagrflow.sim.scene import BLOCK_SIZE, GRIPPER_OPEN

K, H = 7, 8  # the LIBERO config's temporal offset and chunk length


def _expert_prefix(env: SimEnv, seed: int, steps: int) -> dict:
    """Reset from `seed` and take `steps` expert actions; returns the last observation."""
    expert = ScriptedExpert(seed=seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs, *_ = env.step(expert.act(env))
    return obs


def test_observation_layout_is_libero():
    env = SimEnv("object/red_to_basket", depth=True)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "wrist_image", "state", "image_depth", "wrist_image_depth"}
    assert obs["image"].shape == obs["wrist_image"].shape == (128, 128, 3)
    assert obs["image"].dtype == obs["wrist_image"].dtype == np.uint8
    assert obs["image_depth"].shape == obs["wrist_image_depth"].shape == (128, 128)
    assert obs["image_depth"].dtype == np.float32 and np.all(obs["image_depth"] > 0)
    assert np.all(obs["wrist_image_depth"] > 0)
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert len(STATE_NAMES) == 8 and len(ACTION_NAMES) == 7
    assert info["success"] is False and info["instruction"] == "pick up the red block and place it in the basket"


def test_unused_state_dims_stay_constant():
    env = SimEnv("long/stack_then_bowl", render=False)
    expert = ScriptedExpert()
    env.reset(seed=1)
    states = [env.state()]
    done = False
    while not done:
        action = expert.act(env)
        action[3:6] = np.random.default_rng(len(states)).uniform(-1, 1, 3)  # rotation commands are ignored
        _, _, terminated, truncated, _ = env.step(action)
        states.append(env.state())
        done = terminated or truncated
    states = np.stack(states)
    np.testing.assert_array_equal(states[:, 3:6], np.tile(np.float32(EEF_ORIENTATION), (len(states), 1)))
    assert np.all(states[:, 6] == 0.0)
    assert states[:, 0].std() > 0 and states[:, 2].std() > 0 and states[:, 7].std() > 0


def test_image_size_is_configurable():
    obs, _ = make("goal/lift_blue", image_size=(64, 96)).reset(seed=0)
    assert obs["image"].shape == obs["wrist_image"].shape == (64, 96, 3)
    obs, _ = SimEnv("goal/lift_blue", SimConfig(image_size=48)).reset(seed=0)
    assert obs["image"].shape == (48, 48, 3)
    assert set(SimEnv("goal/lift_blue", render=False).reset(seed=0)[0]) == {"state"}


@pytest.mark.parametrize("name", task_names())
def test_same_seed_same_episode(name):
    """Two envs, same seed, same (noisy) expert: every frame and state is identical; another seed differs."""
    runs = []
    for seed in (3, 3, 4):
        env = SimEnv(name, image_size=32)
        expert = ScriptedExpert(noise=0.2, seed=seed)
        obs, _ = env.reset(seed=seed)
        frames = [np.concatenate([obs["image"].ravel(), obs["wrist_image"].ravel()])]
        states = [obs["state"]]
        for _ in range(30):
            obs, *_ = env.step(expert.act(env))
            frames.append(np.concatenate([obs["image"].ravel(), obs["wrist_image"].ravel()]))
            states.append(obs["state"])
        runs.append((np.stack(frames), np.stack(states)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("family", ["spatial", "object", "goal", "long"])
def test_future_frame_depends_on_the_actions(family):
    """From the same state, a no-op chunk and a moving chunk give different t+k frames and states."""
    name = task_names(family)[0]
    results = []
    for chunk in ("noop", "move"):
        env = SimEnv(name)
        obs_t = _expert_prefix(env, seed=5, steps=10)
        grip = 1.0 if env.scene.held >= 0 else -1.0
        for i in range(H):
            action = np.zeros(7, np.float32)
            action[6] = grip
            if chunk == "move":
                action[:3] = (0.8, -0.5, 0.6) if i % 2 else (0.6, -0.6, 0.4)
            obs, *_ = env.step(action)
            if i + 1 == K:
                results.append((obs_t, obs))
    (noop_t, noop_tk), (move_t, move_tk) = results
    for key in ("image", "wrist_image", "state"):
        np.testing.assert_array_equal(noop_t[key], move_t[key])  # same state at t
        assert not np.array_equal(noop_tk[key], move_tk[key]), key
    # a no-op chunk changes nothing: the world only moves through the gripper
    for key in ("image", "wrist_image", "state"):
        np.testing.assert_array_equal(noop_t[key], noop_tk[key])
    assert np.abs(move_tk["state"][:3] - move_t["state"][:3]).max() > 3 * MAX_DELTA


def test_grasp_carry_release():
    env = SimEnv("goal/red_on_plate", render=False)
    env.reset(seed=0)
    s = env.scene
    red = s.block("red")
    start = s.pos.copy()
    s.gripper[:] = s.pos[red] + (0.0, 0.0, 0.02)  # fingertips around the red block
    env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    assert s.held == red and env.state()[7] == pytest.approx(BLOCK_SIZE)
    for _ in range(4):
        env.step(np.array([1, 0, 1, 0, 0, 0, 1], np.float32))
    np.testing.assert_allclose(s.pos[red] - start[red], (4 * MAX_DELTA, 0, 4 * MAX_DELTA), atol=1e-9)
    others = [i for i in range(s.n_blocks) if i != red]
    np.testing.assert_array_equal(s.pos[others], start[others])  # nothing else moved
    env.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))
    assert s.held == -1 and s.pos[red, 2] == 0.0  # dropped onto the table
    assert env.state()[7] == pytest.approx(GRIPPER_OPEN)


def test_closing_away_from_blocks_grasps_nothing():
    env = SimEnv("goal/red_on_plate", render=False)
    env.reset(seed=0)
    env.scene.gripper[:] = (0.0, -0.3, 0.01)
    env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    assert env.scene.held == -1 and env.state()[7] == 0.0


@pytest.mark.parametrize("action", [np.zeros(6), np.zeros(8), np.zeros((1, 7)), [0, 0, np.nan, 0, 0, 0, 1],
                                    [np.inf, 0, 0, 0, 0, 0, 1]])
def test_bad_action_is_a_value_error(action):
    env = SimEnv("goal/lift_blue", render=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: .*goal/red_on_plate"):
        SimEnv("goal/red_on_table")
    with pytest.raises(ValueError, match="valid suites: .*spatial"):
        task_names("libero_10")
    assert len(task_names()) >= 10 and {get_task(n).family for n in task_names()} == {"spatial", "object", "goal", "long"}


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="valid keys: .*image_size"):
        SimEnv("goal/lift_blue", imagesize=64)
    with pytest.raises(ValueError, match="image_size"):
        make("goal/lift_blue", image_size=8)
    with pytest.raises(ValueError, match="max_steps"):
        SimConfig(max_steps=0)


def test_truncation_at_max_steps():
    env = SimEnv("goal/lift_blue", render=False, max_steps=5)
    env.reset(seed=0)
    for _ in range(4):
        assert env.step(np.zeros(7))[3] is False
    _, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert truncated and not terminated and reward == 0.0 and not info["success"]
