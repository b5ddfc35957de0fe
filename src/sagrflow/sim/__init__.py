"""The built-in simulated tabletop suite: a numpy world, four LIBERO-style task families,
scripted experts and LeRobot demonstration writing. It never imports the model."""

from sagrflow.sim.env import ACTION_NAMES, STATE_NAMES, SimConfig, SimEnv, make
from sagrflow.sim.expert import ScriptedExpert, run_expert
from sagrflow.sim.tasks import FAMILIES, TASKS, get_task, task_names

__all__ = [
    "ACTION_NAMES", "FAMILIES", "STATE_NAMES", "TASKS", "ScriptedExpert", "SimConfig", "SimEnv",
    "get_task", "make", "run_expert", "task_names",
]
