"""The tabletop world: what is on the table and the geometry questions asked about it.

Units are metres. The table is the square |x|, |y| <= TABLE_HALF at z = 0; +x is the
agent camera's right, +y points away from it. A block's position is its bottom centre,
the gripper's is the point between its fingertips.

Legend: n blocks, m receptacles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TABLE_HALF = 0.4
REACH = 0.36  # the gripper stays within |x|, |y| <= REACH
Z_MAX = 0.3  # highest gripper position
BLOCK_SIZE = 0.05  # cube edge
GRIPPER_OPEN = 0.08  # finger opening when open
GRIPPER_SPEED = 0.04  # opening change per step: open <-> closed in two steps

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 70),
    "blue": (45, 85, 220),
    "yellow": (235, 200, 35),
    "orange": (240, 130, 30),
    "plate": (240, 240, 232),
    "bowl": (55, 55, 65),
    "basket": (150, 100, 50),
}


@dataclass(frozen=True)
class Receptacle:
    """A static place to put blocks: a round plate or bowl, or a rectangular basket."""

    kind: str  # "plate" | "bowl" | "basket"
    center: tuple[float, float]
    half: tuple[float, float]  # (radius, radius) for round ones, half extents for the basket
    floor: float  # height a block dropped inside rests on
    rim: float  # height of the rim (drawn only)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def round(self) -> bool:
        return self.kind != "basket"

    def contains(self, x: float, y: float, margin: float = 0.0) -> bool:
        dx, dy = x - self.center[0], y - self.center[1]
        if self.round:
            return dx * dx + dy * dy <= (self.half[0] - margin) ** 2
        return abs(dx) <= self.half[0] - margin and abs(dy) <= self.half[1] - margin


def plate(x: float, y: float) -> Receptacle:
    return Receptacle("plate", (x, y), (0.075, 0.075), floor=0.01, rim=0.01)


def bowl(x: float, y: float) -> Receptacle:
    return Receptacle("bowl", (x, y), (0.065, 0.065), floor=0.01, rim=0.04)


def basket(x: float, y: float) -> Receptacle:
    return Receptacle("basket", (x, y), (0.095, 0.07), floor=0.01, rim=0.05)


@dataclass
class Scene:
    """Mutable world state. Only the gripper moves blocks; receptacles never move."""

    block_colors: list[str]  # (n,) colour names, "red" ...
    pos: np.ndarray  # (n, 3) float64 bottom centres
    receptacles: list[Receptacle]  # (m,)
    gripper: np.ndarray  # (3,) fingertip centre
    width: float = GRIPPER_OPEN  # finger opening
    held: int = -1  # index of the grasped block, -1 when none
    held_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))  # block pos - gripper

    @property
    def n_blocks(self) -> int:
        return len(self.block_colors)

    def copy(self) -> Scene:
        return Scene(
            list(self.block_colors), self.pos.copy(), list(self.receptacles), self.gripper.copy(),
            self.width, self.held, self.held_offset.copy(),
        )

    def block_name(self, i: int) -> str:
        return f"{self.block_colors[i]} block"

    def receptacle(self, kind: str) -> int:
        for j, r in enumerate(self.receptacles):
            if r.kind == kind:
                return j
        raise KeyError(kind)

    def block(self, color: str) -> int:
        return self.block_colors.index(color)

    def support_height(self, i: int, x: float, y: float) -> float:
        """Height block `i` comes to rest at when released above (x, y)."""
        z = 0.0
        for r in self.receptacles:
            if r.contains(x, y):
                z = max(z, r.floor)
        reach = BLOCK_SIZE * 0.75  # centres closer than this: the block lands on the other one
        for k in range(self.n_blocks):
            if k != i and k != self.held:
                px, py, pz = self.pos[k]
                if abs(px - x) < reach and abs(py - y) < reach:
                    z = max(z, pz + BLOCK_SIZE)
        return z

    def on_block(self, i: int, k: int) -> bool:
        """Block i rests on top of block k."""
        if self.held in (i, k):
            return False
        dx, dy, dz = self.pos[i] - self.pos[k]
        reach = BLOCK_SIZE * 0.75
        return abs(dx) < reach and abs(dy) < reach and abs(dz - BLOCK_SIZE) < 1e-3

    def in_receptacle(self, i: int, j: int) -> bool:
        if self.held == i:
            return False
        x, y, _ = self.pos[i]
        return self.receptacles[j].contains(x, y, margin=0.01)
