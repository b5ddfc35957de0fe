"""Rendering: objects are told apart by colour, the wrist camera moves with the gripper, depth is geometric."""

from __future__ import annotations

import numpy as np

from sagrflow.sim import SimEnv
from sagrflow.sim.env import MAX_DELTA
from sagrflow.sim.render import WRIST_UP
from sagrflow.sim.scene import BLOCK_SIZE, COLORS


def _shift(old: np.ndarray, new: np.ndarray, max_shift: int = 20) -> int:
    """Horizontal shift d that best explains new[:, u] == old[:, u + d]."""
    errors = {}
    for d in range(-max_shift, max_shift + 1):
        a = new[:, max(0, -d): new.shape[1] - max(0, d)].astype(int)
        b = old[:, max(0, d): old.shape[1] - max(0, -d)].astype(int)
        errors[d] = np.abs(a - b).mean()
    return min(errors, key=errors.get)


def test_every_block_is_visible_in_its_own_colour():
    env = SimEnv("long/stack_then_bowl")
    obs, _ = env.reset(seed=0)
    colors = np.array([COLORS[c] for c in env.scene.block_colors], float)
    gaps = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert gaps[~np.eye(len(colors), dtype=bool)].min() > 80  # clearly different colours
    for color in env.scene.block_colors:
        assert np.all(obs["image"] == COLORS[color], axis=-1).sum() >= 25, color


def test_wrist_camera_moves_with_the_gripper():
    env = SimEnv("goal/red_on_plate")
    env.reset(seed=2)
    env.scene.gripper[:] = (0.0, -0.1, 0.2)
    before = env.render()
    env.step(np.array([1, 0, 0, 0, 0, 0, -1], np.float32))  # +x by MAX_DELTA
    after = env.render()
    expected = MAX_DELTA * env._renderer.f / (0.2 + WRIST_UP)  # pixels the table slides by
    assert abs(_shift(before["wrist_image"], after["wrist_image"]) - expected) <= 1.0
    # the agent camera is fixed: far from the gripper its picture is unchanged
    assert np.array_equal(before["image"][:, :40], after["image"][:, :40])
    assert not np.array_equal(before["image"], after["image"])


def test_depth_sees_blocks_above_the_table():
    env = SimEnv("goal/red_on_plate", depth=True)
    env.reset(seed=0)
    s = env.scene
    red = s.block("red")
    s.gripper[:] = s.pos[red] + (0.0, 0.0, 0.12)
    wrist = env.render()["wrist_image_depth"]
    h, w = wrist.shape
    cam = s.gripper[2] + WRIST_UP
    assert wrist[h // 2, w // 2] == np.float32(cam - BLOCK_SIZE)  # the block top right below
    assert wrist.max() >= cam - 1e-5  # the table around it is farther
    agent_with = env.render()["image_depth"]
    s.pos[red] = (5.0, 5.0, 0.0)  # take the block out of view: its pixels now see the table
    agent_without = env.render()["image_depth"]
    changed = agent_with != agent_without
    assert changed.sum() >= 25
    assert np.all(agent_with[changed] < agent_without[changed])  # the block was in front of the table
