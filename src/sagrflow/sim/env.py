"""The tabletop environment: Gymnasium-style `reset(seed)` / `step(action)`.

Observations use the LIBERO layout: `image` (fixed agent view), `wrist_image` (moves
with the gripper), an 8-d `state` (x, y, z, roll, pitch, yaw, pad, gripper) and, with
`depth=True`, `image_depth` / `wrist_image_depth`. Actions are 7-d deltas
(x, y, z, roll, pitch, yaw, gripper) in [-1, 1]; gripper > 0 closes (LIBERO: -1 open,
+1 close). The sim has no wrist rotation: roll, pitch, yaw and pad stay constant.

Blocks move only through the gripper: closing it around a block grasps it, opening it
drops the block onto whatever is below. So the frame at t+k depends on the actions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from sagrflow.sim.scene import BLOCK_SIZE, GRIPPER_OPEN, GRIPPER_SPEED, REACH, Z_MAX, Scene
from sagrflow.sim.tasks import Goal, Task, get_task

ACTION_DIM = 7
STATE_DIM = 8
STATE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper")
ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
MAX_DELTA = 0.025  # metres per step at |action| = 1
EEF_ORIENTATION = (np.pi, 0.0, 0.0)  # axis-angle of a gripper pointing down, as in LIBERO
_GRASP_XY = ((GRIPPER_OPEN - BLOCK_SIZE) / 2, BLOCK_SIZE * 0.3)  # |dx|, |dy| a grasp tolerates


@dataclass(frozen=True)
class SimConfig:
    image_size: int | tuple[int, int] = 128  # (h, w) or a square side
    render: bool = True  # False: observations hold only `state` (fast, for experts and tests)
    depth: bool = False  # add `image_depth` / `wrist_image_depth` (h, w) float32 metres
    max_steps: int | None = None  # None: the task's own limit

    def __post_init__(self):
        h, w = self.size
        if h < 16 or w < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> SimConfig:
        """Like `SimConfig(**kwargs)`, but a misspelled key is a ValueError naming the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"unknown sim config keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**kwargs)

    @property
    def size(self) -> tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, int | np.integer) else (int(s[0]), int(s[1]))


class SimEnv:
    """One task of the suite. `env = SimEnv("object/red_to_basket"); obs, info = env.reset(seed=0)`."""

    def __init__(self, task: str | Task, config: SimConfig | None = None, **overrides):
        self.task = get_task(task) if isinstance(task, str) else task
        if config is None:
            config = SimConfig.from_kwargs(**overrides)
        elif overrides:
            raise ValueError("pass either a SimConfig or keyword overrides, not both")
        self.config = config
        self.max_steps = config.max_steps or self.task.max_steps
        self._renderer = None
        if config.render:
            from sagrflow.sim.render import Renderer

            self._renderer = Renderer(config.size, depth=config.depth)
        self._seed_rng = np.random.default_rng()
        self.scene: Scene | None = None
        self.goals: tuple[Goal, ...] = ()
        self.steps = 0
        self.seed: int | None = None

    @property
    def instruction(self) -> str:
        return self.task.instruction

    # ------------------------------------------------------------------ api
    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        """Sample the initial state from `seed` (None: a fresh one); returns (obs, info)."""
        if seed is None:
            seed = int(self._seed_rng.integers(2**31))
        self.seed = int(seed)
        self.scene, self.goals = self.task.build(np.random.default_rng(self.seed))
        self.steps = 0
        if self._renderer is not None:
            self._renderer.reset(self.scene)
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """(7,) delta action -> (obs, reward, terminated, truncated, info)."""
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},) = {ACTION_NAMES}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        self._move(a[:3] * MAX_DELTA, close=bool(a[6] > 0))
        self.steps += 1
        success = self.success()
        truncated = not success and self.steps >= self.max_steps
        return self._obs(), float(success), success, truncated, self._info(success)

    def render(self) -> dict[str, np.ndarray]:
        """The cameras (and depth maps) of the current state; needs `render=True`."""
        if self._renderer is None:
            raise ValueError("this env was made with render=False; make it with render=True to get images")
        return self._renderer.render(self.scene)

    def success(self) -> bool:
        return all(g.done(self.scene) for g in self.goals)

    def state(self) -> np.ndarray:
        """(8,) float32: x, y, z, roll, pitch, yaw, pad, gripper (finger opening)."""
        g = self.scene.gripper
        return np.array([g[0], g[1], g[2], *EEF_ORIENTATION, 0.0, self.scene.width], dtype=np.float32)

    # ------------------------------------------------------------------ physics
    def _move(self, delta: np.ndarray, close: bool) -> None:
        s = self.scene
        lo = np.array([-REACH, -REACH, 0.0])
        if s.held >= 0:
            lo[2] = -s.held_offset[2]  # a held block cannot go through the table
        s.gripper = np.clip(s.gripper + delta, lo, (REACH, REACH, Z_MAX))
        if close:
            was_open = s.width
            s.width = max(0.0, s.width - GRIPPER_SPEED)
            if s.held < 0 and was_open > BLOCK_SIZE >= s.width:
                self._grasp()
            if s.held >= 0:
                s.width = BLOCK_SIZE
        else:
            s.width = min(GRIPPER_OPEN, s.width + GRIPPER_SPEED)
            if s.held >= 0:
                self._release()
        if s.held >= 0:
            s.pos[s.held] = s.gripper + s.held_offset

    def _grasp(self) -> None:
        """Fingers closing past a block's width between them take hold of it."""
        s = self.scene
        gx, gy, gz = s.gripper
        for i in range(s.n_blocks):
            bx, by, bz = s.pos[i]
            if (abs(bx - gx) <= _GRASP_XY[0] and abs(by - gy) <= _GRASP_XY[1]
                    and bz - 1e-6 <= gz <= bz + BLOCK_SIZE - 0.01):
                s.held = i
                s.held_offset = s.pos[i] - s.gripper
                return

    def _release(self) -> None:
        s = self.scene
        i, s.held = s.held, -1
        x, y, _ = s.pos[i]
        s.pos[i, 2] = s.support_height(i, x, y)

    # ------------------------------------------------------------------ output
    def _obs(self) -> dict:
        obs = {"state": self.state()}
        if self._renderer is not None:
            obs.update(self.render())
        return obs

    def _info(self, success: bool | None = None) -> dict:
        return {
            "success": self.success() if success is None else success,
            "task": self.task.name,
            "instruction": self.task.instruction,
            "goals_done": int(sum(g.done(self.scene) for g in self.goals)),
            "steps": self.steps,
        }


def make(task: str, **config) -> SimEnv:
    """`make("goal/red_on_plate", image_size=96, depth=True)`."""
    return SimEnv(task, SimConfig.from_kwargs(**config))
