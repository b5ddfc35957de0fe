"""Scripted experts: one closed-loop pick-and-place controller that serves every family.

The expert reads the privileged scene (block positions and the task's resolved goals)
and decides each step from the current state alone, so a noisy step or a missed grasp
is simply corrected on the next one. Per goal: open, rise to travel height, fly above
the block, descend, close; rise, fly above the destination, descend, open.
"""

from __future__ import annotations

import numpy as np

from sagrflow.sim.env import ACTION_DIM, MAX_DELTA, SimEnv
from sagrflow.sim.scene import BLOCK_SIZE, GRIPPER_OPEN, Scene
from sagrflow.sim.tasks import Goal

TRAVEL_Z = 0.14  # fingertip height while flying: above two stacked blocks
GRASP_Z = 0.02  # fingertips this far above a block's bottom when closing
LIFT_Z = 0.22
XY_TOL, Z_TOL = 0.004, 0.004  # aligned enough to close or open
NEAR = 0.015  # closer than this in xy: descend while finishing the alignment
OPEN, CLOSE = -1.0, 1.0


class ScriptedExpert:
    """`expert = ScriptedExpert(noise=0.1, seed=0); action = expert.act(env)`.

    `noise` is the std of Gaussian noise added to the xyz action (action units, where 1
    is MAX_DELTA metres); the closed loop corrects it, so demonstrations vary but succeed.
    """

    def __init__(self, noise: float = 0.0, seed: int | None = None):
        if not noise >= 0.0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, env: SimEnv) -> np.ndarray:
        """(7,) float32 action for the env's current state."""
        s = env.scene
        goal = next((g for g in env.goals if not g.done(s)), None)
        if goal is None:  # all done: hold still
            target, grip = s.gripper, (CLOSE if s.held >= 0 else OPEN)
        elif s.held == goal.block:
            target, grip = self._place(s, goal)
        elif s.held >= 0:  # holding the wrong block: let it go
            target, grip = s.gripper, OPEN
        else:
            target, grip = self._pick(s, goal)
        action = np.zeros(ACTION_DIM, np.float64)
        action[:3] = np.clip((target - s.gripper) / MAX_DELTA, -1.0, 1.0)
        if self.noise > 0:
            action[:3] = np.clip(action[:3] + self.rng.normal(0.0, self.noise, 3), -1.0, 1.0)
        action[6] = grip
        return action.astype(np.float32)

    # ------------------------------------------------------------------ phases
    def _pick(self, s: Scene, goal: Goal) -> tuple[np.ndarray, float]:
        bx, by, bz = s.pos[goal.block]
        grasp = np.array([bx, by, bz + GRASP_Z])
        err = float(np.hypot(bx - s.gripper[0], by - s.gripper[1]))
        if err > NEAR:
            return self._fly(s, grasp[:2]), OPEN
        ready = s.width >= GRIPPER_OPEN - 1e-9 and err <= XY_TOL and s.gripper[2] <= grasp[2] + Z_TOL
        return grasp, (CLOSE if ready else OPEN)

    def _place(self, s: Scene, goal: Goal) -> tuple[np.ndarray, float]:
        if goal.dest == "lift":
            return np.array([s.gripper[0], s.gripper[1], LIFT_Z]), CLOSE
        dest = self._destination(s, goal)
        err = float(np.hypot(*(dest - s.gripper[:2])))
        if err > NEAR:
            return self._fly(s, dest), CLOSE
        if goal.dest == "block":
            support = s.pos[goal.target, 2] + BLOCK_SIZE
        else:
            support = s.support_height(goal.block, *dest)
        place = np.array([dest[0], dest[1], support - s.held_offset[2] + 0.008])
        ready = err <= XY_TOL and s.gripper[2] <= place[2] + Z_TOL
        return place, (OPEN if ready else CLOSE)

    @staticmethod
    def _fly(s: Scene, xy: np.ndarray) -> np.ndarray:
        """Rise first when low (so nothing is dragged across the table), then fly level."""
        if s.gripper[2] < TRAVEL_Z - 0.02:
            return np.array([s.gripper[0], s.gripper[1], TRAVEL_Z])
        return np.array([xy[0], xy[1], TRAVEL_Z])

    @staticmethod
    def _destination(s: Scene, goal: Goal) -> np.ndarray:
        """(2,) xy to release over: a block's centre, or a free spot inside the receptacle."""
        if goal.dest == "block":
            return s.pos[goal.target, :2].copy()
        r = s.receptacles[goal.target]
        cx, cy = r.center
        spots = [(cx, cy)]
        if not r.round:  # the basket holds several blocks side by side
            spots += [(cx - r.half[0] / 2, cy), (cx + r.half[0] / 2, cy)]
        others = [s.pos[k, :2] for k in range(s.n_blocks) if k != goal.block]
        for spot in spots:
            if all(np.hypot(*(np.asarray(spot) - o)) >= BLOCK_SIZE * 1.1 for o in others):
                return np.array(spot)
        return np.array(spots[0])


def run_expert(env: SimEnv, seed: int, noise: float = 0.0) -> tuple[bool, int]:
    """Roll the expert out from `seed`; returns (success, steps)."""
    expert = ScriptedExpert(noise=noise, seed=seed)
    env.reset(seed=seed)
    for _ in range(env.max_steps):
        _, _, terminated, truncated, info = env.step(expert.act(env))
        if terminated or truncated:
            return bool(info["success"]), env.steps
    return False, env.steps
