"""The task suite: four families in the spirit of LIBERO's suites, each task an instruction,
a seeded initial-state sampler and a success predicate.

- spatial: two identical blocks, told apart only by where they are ("left of the bowl").
- object:  four coloured blocks and a basket; the instruction names the block.
- goal:    one scene, different goals; only the instruction says which.
- long:    two goals in sequence.

A task's goals are resolved against the sampled scene (which block is "left of the
bowl"), so the success predicate and the scripted expert read the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sagrflow.sim.scene import BLOCK_SIZE, Receptacle, Scene, basket, bowl, plate

FAMILIES = ("spatial", "object", "goal", "long")
LIFT_HEIGHT = 0.15  # a lifted block's bottom is at least this high


@dataclass(frozen=True)
class Goal:
    """Block `block` ends in receptacle `target`, on block `target`, or lifted (`dest="lift"`)."""

    block: int
    dest: str  # "receptacle" | "block" | "lift"
    target: int = -1

    def done(self, scene: Scene) -> bool:
        if self.dest == "receptacle":
            return scene.in_receptacle(self.block, self.target)
        if self.dest == "block":
            return scene.on_block(self.block, self.target)
        return scene.held == self.block and scene.pos[self.block, 2] >= LIFT_HEIGHT


@dataclass(frozen=True)
class Task:
    name: str  # "family/short_name"
    family: str
    instruction: str
    build: Callable[[np.random.Generator], tuple[Scene, tuple[Goal, ...]]]
    max_steps: int


# ------------------------------------------------------------------ layouts
_REGION = ((-0.3, 0.3), (-0.2, 0.3))  # where things are placed: x range, y range
_BLOCK_R = BLOCK_SIZE * 0.75  # clearance radius of a block


def _radius(item: str) -> float:
    return {"plate": 0.075, "bowl": 0.065, "basket": 0.12}.get(item, _BLOCK_R)


def _sample_free(rng: np.random.Generator, r: float, placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    for _ in range(200):
        x = rng.uniform(_REGION[0][0] + r, _REGION[0][1] - r)
        y = rng.uniform(_REGION[1][0] + r, _REGION[1][1] - r)
        if all((x - px) ** 2 + (y - py) ** 2 >= (r + pr + 0.02) ** 2 for px, py, pr in placed):
            return x, y
    raise RuntimeError("layout rejected")


def _layout(rng: np.random.Generator, items: list[str]) -> list[tuple[float, float]]:
    """Non-overlapping centres for `items` (receptacle kinds or block colours), largest first."""
    order = sorted(range(len(items)), key=lambda i: -_radius(items[i]))
    for _ in range(100):
        placed: list[tuple[float, float, float]] = []
        out: dict[int, tuple[float, float]] = {}
        try:
            for i in order:
                r = _radius(items[i])
                out[i] = _sample_free(rng, r, placed)
                placed.append((*out[i], r))
        except RuntimeError:
            continue
        return [out[i] for i in range(len(items))]
    raise RuntimeError(f"could not place {items}")


_MAKERS = {"plate": plate, "bowl": bowl, "basket": basket}


def _gripper_start(rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.3, -0.2), rng.uniform(0.18, 0.24)])


def _scene(rng: np.random.Generator, receptacles: list[str], blocks: list[str],
           centers: list[tuple[float, float]] | None = None) -> Scene:
    """A scene with `receptacles` then `blocks` (colours); positions sampled unless given."""
    items = receptacles + blocks
    centers = centers if centers is not None else _layout(rng, items)
    recs: list[Receptacle] = [_MAKERS[k](*c) for k, c in zip(receptacles, centers[: len(receptacles)], strict=True)]
    pos = np.zeros((len(blocks), 3))
    for i, (x, y) in enumerate(centers[len(receptacles):]):
        pos[i] = (x, y, 0.0)
    return Scene(list(blocks), pos, recs, _gripper_start(rng))


# ------------------------------------------------------------------ families
def _spatial_scene(rng: np.random.Generator) -> tuple[Scene, int, int]:
    """Bowl, plate and two identical blocks, one on each side of the bowl; returns (scene, left, right)."""
    for _ in range(1000):
        bx, by = rng.uniform(-0.06, 0.06), rng.uniform(-0.08, 0.18)
        left = (bx - rng.uniform(0.12, 0.2), by + rng.uniform(-0.08, 0.08))
        right = (bx + rng.uniform(0.12, 0.2), by + rng.uniform(-0.08, 0.08))
        placed = [(bx, by, 0.065), (*left, _BLOCK_R), (*right, _BLOCK_R)]
        try:
            px, py = _sample_free(rng, 0.075, placed)
        except RuntimeError:
            continue
        dl, dr = np.hypot(left[0] - px, left[1] - py), np.hypot(right[0] - px, right[1] - py)
        if abs(dl - dr) < 0.08:  # "nearest the plate" must be clear at a glance
            continue
        flip = bool(rng.integers(2))  # block index says nothing about the side
        blocks = [right, left] if flip else [left, right]
        scene = _scene(rng, ["bowl", "plate"], ["orange", "orange"], [(bx, by), (px, py), *blocks])
        return scene, int(flip), int(not flip)
    raise RuntimeError("spatial layout rejected")


def _spatial(select: str, dest: str) -> Callable:
    def build(rng: np.random.Generator) -> tuple[Scene, tuple[Goal, ...]]:
        scene, left, right = _spatial_scene(rng)
        plate_xy = np.array(scene.receptacles[scene.receptacle("plate")].center)
        dist = [float(np.hypot(*(scene.pos[i, :2] - plate_xy))) for i in (0, 1)]
        block = {"left": left, "right": right, "near": int(np.argmin(dist)), "far": int(np.argmax(dist))}[select]
        return scene, (Goal(block, "receptacle", scene.receptacle(dest)),)

    return build


def _object(color: str) -> Callable:
    def build(rng: np.random.Generator) -> tuple[Scene, tuple[Goal, ...]]:
        scene = _scene(rng, ["basket"], ["red", "green", "blue", "yellow"])
        return scene, (Goal(scene.block(color), "receptacle", 0),)

    return build


_GOAL_SCENE = (["plate", "bowl"], ["red", "blue", "green"])
_LONG_SCENE = (["plate", "bowl", "basket"], ["red", "blue", "green", "yellow"])


def _goals(scene_items: tuple[list[str], list[str]], *specs: tuple[str, str, str]) -> Callable:
    """Goals as (block colour, "in"/"on"/"lift", receptacle kind or block colour)."""

    def build(rng: np.random.Generator) -> tuple[Scene, tuple[Goal, ...]]:
        scene = _scene(rng, *scene_items)
        goals = []
        for color, rel, where in specs:
            i = scene.block(color)
            if rel == "lift":
                goals.append(Goal(i, "lift"))
            elif where in _MAKERS:
                goals.append(Goal(i, "receptacle", scene.receptacle(where)))
            else:
                goals.append(Goal(i, "block", scene.block(where)))
        return scene, tuple(goals)

    return build


def _build_registry() -> dict[str, Task]:
    tasks = [
        Task("spatial/left_of_bowl_to_plate", "spatial", "put the block left of the bowl on the plate",
             _spatial("left", "plate"), 120),
        Task("spatial/right_of_bowl_to_plate", "spatial", "put the block right of the bowl on the plate",
             _spatial("right", "plate"), 120),
        Task("spatial/nearest_plate_to_bowl", "spatial", "put the block nearest the plate in the bowl",
             _spatial("near", "bowl"), 120),
        Task("spatial/farthest_plate_to_bowl", "spatial", "put the block farthest from the plate in the bowl",
             _spatial("far", "bowl"), 120),
    ]
    for color in ("red", "green", "blue", "yellow"):
        tasks.append(Task(f"object/{color}_to_basket", "object",
                          f"pick up the {color} block and place it in the basket", _object(color), 120))
    goal = _GOAL_SCENE
    tasks += [
        Task("goal/red_on_plate", "goal", "put the red block on the plate", _goals(goal, ("red", "in", "plate")), 120),
        Task("goal/blue_in_bowl", "goal", "put the blue block in the bowl", _goals(goal, ("blue", "in", "bowl")), 120),
        Task("goal/stack_green_on_red", "goal", "stack the green block on the red block",
             _goals(goal, ("green", "on", "red")), 120),
        Task("goal/lift_blue", "goal", "pick up the blue block and lift it", _goals(goal, ("blue", "lift", "")), 120),
    ]
    long = _LONG_SCENE
    tasks += [
        Task("long/red_bowl_then_blue_plate", "long",
             "put the red block in the bowl and then put the blue block on the plate",
             _goals(long, ("red", "in", "bowl"), ("blue", "in", "plate")), 240),
        Task("long/green_and_yellow_basket", "long", "put the green block and the yellow block in the basket",
             _goals(long, ("green", "in", "basket"), ("yellow", "in", "basket")), 240),
        Task("long/stack_then_bowl", "long",
             "stack the yellow block on the red block and then put the green block in the bowl",
             _goals(long, ("yellow", "on", "red"), ("green", "in", "bowl")), 240),
    ]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build_registry()


def task_names(suite: str = "all") -> list[str]:
    """The tasks of one family, or of all of them."""
    if suite == "all":
        return list(TASKS)
    if suite not in FAMILIES:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {['all', *FAMILIES]}")
    return [name for name, t in TASKS.items() if t.family == suite]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {list(TASKS)}")
    return TASKS[name]
