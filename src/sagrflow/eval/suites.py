"""Evaluation suites: a list of tasks with their step limits and an environment factory.

Every environment the harness drives has the `SimEnv` surface: `reset(seed) -> (obs, info)`,
`step(action) -> (obs, reward, terminated, truncated, info)` with `info["success"]`,
`instruction`, `max_steps`, `close()` optional. Observations carry `image`, `wrist_image`
(HWC uint8, libero_franka camera order) and an 8-d `state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
SIM_SUITES = ("all", "spatial", "object", "goal", "long")
EVAL_SEED = 100_000  # first evaluation seed of the sim: far above the seeds demonstrations use


@dataclass(frozen=True)
class TaskSpec:
    name: str
    instruction: str
    max_steps: int


class Suite(Protocol):
    name: str
    first_seed: int

    def tasks(self) -> list[TaskSpec]: ...

    def make_env(self, task: str, max_steps: int | None = None) -> Any: ...


@dataclass(frozen=True)
class SimSuite:
    """A family of the built-in sim ("all" for every task). Seeds count up from `first_seed`."""

    family: str = "all"
    image_size: int = 128
    first_seed: int = EVAL_SEED

    @property
    def name(self) -> str:
        return f"sim_{self.family}"

    def tasks(self) -> list[TaskSpec]:
        from sagrflow.sim.tasks import get_task, task_names

        return [TaskSpec(n, get_task(n).instruction, get_task(n).max_steps) for n in task_names(self.family)]

    def make_env(self, task: str, max_steps: int | None = None):
        from sagrflow.sim.env import SimConfig, SimEnv

        return SimEnv(task, SimConfig(image_size=self.image_size, max_steps=max_steps))


def get_suite(name: str, image_size: int | None = None, first_seed: int | None = None) -> Suite:
    """`spatial` / `sim_spatial` / `all` -> the sim; `libero_spatial` or `libero:spatial` -> LIBERO.

    `image_size` None: the suite's own (128 for the sim, LIBERO's 256 render size).
    `first_seed` None: 100000 for the sim, init state 0 for LIBERO.
    """
    key = name.removeprefix("sim_").removeprefix("sim:")
    if key in SIM_SUITES:
        return SimSuite(key, image_size or 128, EVAL_SEED if first_seed is None else first_seed)
    libero_name = name.replace("libero:", "libero_")
    if libero_name in LIBERO_SUITES:
        from sagrflow.eval.libero import LiberoSuite

        return LiberoSuite(libero_name, image_size or 256, first_seed=first_seed or 0)
    valid = [*SIM_SUITES, *LIBERO_SUITES]
    raise ValueError(f"unknown suite {name!r}; valid suites: {valid}")
