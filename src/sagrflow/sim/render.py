"""Pure-numpy rendering of both cameras, with optional depth.

- Agent view (`image`): a fixed orthographic camera in front of the table, looking down
  at ELEVATION. Under that projection every box face is an axis-aligned rectangle in the
  image, so a frame is a copy of the static background (table, receptacles) plus a few
  slice fills, painted far to near.
- Wrist view (`wrist_image`): a pinhole camera WRIST_UP above the fingertips looking
  straight down (image up = +y). The table and receptacles are sampled from a top-down
  map drawn once per reset; blocks and fingers are scaled by their distance.
Depth is metres along the optical axis (the agent camera sits AGENT_DISTANCE away).

Legend: h/w image size, M map side in pixels.
"""

from __future__ import annotations

import math

import numpy as np

from sagrflow.sim.scene import BLOCK_SIZE, COLORS, GRIPPER_OPEN, TABLE_HALF, Scene

ELEVATION = math.radians(55)
AGENT_DISTANCE = 2.0
WRIST_UP = 0.1
_MAP_HALF, _MAP_RES = 0.7, 0.004  # wrist map: covers |x|, |y| <= _MAP_HALF at _MAP_RES m per pixel
_WOOD = (np.array([186, 150, 108]), np.array([170, 135, 95]))
_FLOOR = np.array([88, 84, 80], np.uint8)
_FINGER = np.array([80, 80, 92], np.uint8)
_PALM = np.array([140, 140, 152], np.uint8)
_ARM = np.array([112, 112, 124], np.uint8)


def _shade(color: tuple[int, int, int] | np.ndarray, f: float) -> np.ndarray:
    return np.clip(np.asarray(color, np.float64) * f, 0, 255).astype(np.uint8)


class Renderer:
    """`Renderer((h, w)).reset(scene)` once per episode, then `render(scene)` per step."""

    def __init__(self, size: tuple[int, int], depth: bool = False):
        self.h, self.w = size
        self.depth = depth
        h, w = self.h, self.w
        self.sin, self.cos = math.sin(ELEVATION), math.cos(ELEVATION)
        self.su, self.sv = 1.5 * w, 1.5 * h  # agent view pixels per metre
        self.u0, self.v0 = w / 2, 0.56 * h
        # (y sin + z cos) seen by each agent-view row: horizontal and vertical planes invert it
        self.row_e = (self.v0 - (np.arange(h) + 0.5)) / self.sv  # (h,)
        self.f = 0.75 * min(h, w)  # wrist focal length in pixels
        self.wrist_u = np.arange(w) + 0.5 - w / 2  # (w,)
        self.wrist_v = np.arange(h) + 0.5 - h / 2  # (h,)
        self._table, self._table_depth = self._draw_table()
        self.colors = {name: (np.array(c, np.uint8), _shade(c, 0.68), _shade(c, 0.45)) for name, c in COLORS.items()}

    # ================================================================ agent view
    def _u(self, x: float) -> float:
        return self.u0 + x * self.su

    def _v(self, y: float, z: float) -> float:
        return self.v0 - self.sv * (y * self.sin + z * self.cos)

    def _flat_depth(self, z: float) -> np.ndarray:  # (h,) depth of the plane at height z, per row
        return AGENT_DISTANCE + self.row_e * (self.cos / self.sin) - z / self.sin

    def _wall_depth(self, y: float) -> np.ndarray:  # (h,) depth of the vertical plane at y, per row
        return AGENT_DISTANCE + y / self.cos - self.row_e * (self.sin / self.cos)

    def _box(self, img, dep, x0, x1, v_a, v_b, color, plane: tuple[str, float]) -> None:
        """Fill columns u(x0)..u(x1), rows v_a..v_b of a ("flat", z) or ("wall", y) plane."""
        c0, c1 = max(round(self._u(x0)), 0), min(round(self._u(x1)), self.w)
        r0, r1 = max(round(v_a), 0), min(round(v_b), self.h)
        if c0 < c1 and r0 < r1:
            img[r0:r1, c0:c1] = color
            if dep is not None:
                kind, value = plane
                rows = self._flat_depth(value) if kind == "flat" else self._wall_depth(value)
                dep[r0:r1, c0:c1] = rows[r0:r1, None]

    def _draw_table(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.h, self.w
        e = self.row_e[:, None]  # (h, 1)
        u = (np.arange(w)[None, :] + 0.5 - self.u0) / self.su  # (1, w) = x
        y = e / self.sin  # table plane z = 0
        on_table = (np.abs(u) <= TABLE_HALF) & (np.abs(y) <= TABLE_HALF)  # (h, w)
        checker = ((np.floor(u / 0.1) + np.floor(y / 0.1)) % 2).astype(int)
        wall = np.linspace(205, 160, h)[:, None, None] * np.array([0.92, 0.96, 1.0])  # (h, 1, 3)
        img = np.broadcast_to(wall, (h, w, 3)).copy()
        beyond = y > TABLE_HALF
        img = np.where(~beyond[..., None], _FLOOR, img)
        img = np.where(on_table[..., None], np.stack(_WOOD)[checker], img).astype(np.uint8)
        depth = np.where(beyond, AGENT_DISTANCE + TABLE_HALF * 1.5, np.broadcast_to(self._flat_depth(0.0)[:, None], (h, w)))
        front = self._v(-TABLE_HALF, 0.0)  # the table's front edge, seen from above
        self._box(img, depth, -TABLE_HALF, TABLE_HALF, front, front + 0.06 * self.sv, _shade(_WOOD[1], 0.7),
                  ("wall", -TABLE_HALF))
        return img, depth.astype(np.float32)

    def _ellipse(self, img, dep, cx, cy, z, r, color) -> None:
        """A horizontal disk of radius r at height z."""
        uc, vc = self._u(cx), self._v(cy, z)
        ru, rv = r * self.su, r * self.sv * self.sin
        c0, c1 = max(int(uc - ru), 0), min(int(uc + ru) + 2, self.w)
        r0, r1 = max(int(vc - rv), 0), min(int(vc + rv) + 2, self.h)
        uu = (np.arange(c0, c1) + 0.5 - uc) / ru
        vv = (np.arange(r0, r1) + 0.5 - vc) / rv
        mask = uu[None, :] ** 2 + vv[:, None] ** 2 <= 1.0
        img[r0:r1, c0:c1][mask] = color
        if dep is not None:
            dep[r0:r1, c0:c1][mask] = np.broadcast_to(self._flat_depth(z)[r0:r1, None], mask.shape)[mask]

    def _receptacle_agent(self, img, dep, r) -> None:
        base, side, dark = self.colors[r.kind]
        cx, cy = r.center
        if r.kind == "plate":
            self._ellipse(img, dep, cx, cy, 0.0, r.half[0], side)
            self._ellipse(img, dep, cx, cy, r.rim, r.half[0] * 0.97, base)
            self._ellipse(img, dep, cx, cy, r.rim, r.half[0] * 0.7, _shade(base, 0.93))
        elif r.kind == "bowl":
            rad = r.half[0]
            self._ellipse(img, dep, cx, cy, 0.0, rad * 0.75, side)
            self._box(img, dep, cx - rad, cx + rad, self._v(cy, r.rim), self._v(cy, 0.0), side, ("wall", cy))
            self._ellipse(img, dep, cx, cy, r.rim, rad, base)
            self._ellipse(img, dep, cx, cy, r.rim, rad * 0.8, dark)
        else:
            hx, hy = r.half
            self._box(img, dep, cx - hx, cx + hx, self._v(cy + hy, r.rim), self._v(cy - hy, r.rim), base, ("flat", r.rim))
            self._box(img, dep, cx - hx + 0.01, cx + hx - 0.01, self._v(cy + hy - 0.01, r.rim),
                      self._v(cy - hy + 0.01, r.rim), dark, ("flat", r.floor))
            self._box(img, dep, cx - hx, cx + hx, self._v(cy - hy, r.rim), self._v(cy - hy, 0.0), side,
                      ("wall", cy - hy))

    def _block_agent(self, img, dep, x, y, z, color) -> None:
        base, side, _ = self.colors[color]
        s = BLOCK_SIZE / 2
        top = z + BLOCK_SIZE
        self._box(img, dep, x - s, x + s, self._v(y + s, top), self._v(y - s, top), base, ("flat", top))
        self._box(img, dep, x - s, x + s, self._v(y - s, top), self._v(y - s, z), side, ("wall", y - s))

    def _gripper_agent(self, img, dep, scene: Scene) -> None:
        x, y, z = scene.gripper.tolist()
        rows = ("wall", y)
        half = scene.width / 2
        for sign in (-1.0, 1.0):
            a, b = sorted((x + sign * half, x + sign * (half + 0.012)))
            self._box(img, dep, a, b, self._v(y, z + 0.055), self._v(y, z), _FINGER, rows)
        self._box(img, dep, x - GRIPPER_OPEN / 2 - 0.015, x + GRIPPER_OPEN / 2 + 0.015, self._v(y, z + 0.075),
                  self._v(y, z + 0.055), _PALM, rows)
        self._box(img, dep, x - 0.018, x + 0.018, 0, self._v(y, z + 0.075), _ARM, rows)

    def _shadow(self, img, x: float, y: float) -> None:
        s = BLOCK_SIZE / 2
        c0, c1 = max(round(self._u(x - s)), 0), min(round(self._u(x + s)), self.w)
        r0, r1 = max(round(self._v(y + s * 0.6, 0.0)), 0), min(round(self._v(y - s * 0.6, 0.0)), self.h)
        if c0 < c1 and r0 < r1:
            img[r0:r1, c0:c1] = (img[r0:r1, c0:c1] * 0.6).astype(np.uint8)

    def _agent(self, scene: Scene) -> tuple[np.ndarray, np.ndarray | None]:
        img = self._bg.copy()
        dep = self._bg_depth.copy() if self.depth else None
        gx, gy, gz = scene.gripper.tolist()
        self._shadow(img, gx, gy)
        pos = scene.pos.tolist()
        # painter's order: far to near by the depth of each item's centre; gripper and held block together
        items = [(y * self.cos - (z + 0.025) * self.sin, i) for i, (x, y, z) in enumerate(pos) if i != scene.held]
        items.append((gy * self.cos - gz * self.sin, -1))
        for _, i in sorted(items, reverse=True):
            if i >= 0:
                self._block_agent(img, dep, *pos[i], scene.block_colors[i])
            else:
                if scene.held >= 0:
                    self._block_agent(img, dep, *pos[scene.held], scene.block_colors[scene.held])
                self._gripper_agent(img, dep, scene)
        return img, dep

    # ================================================================ wrist view
    def _draw_map(self, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
        """(M, M, 3) uint8 top-down colours and (M, M) heights of the table and receptacles."""
        m = int(round(2 * _MAP_HALF / _MAP_RES))
        c = (np.arange(m) + 0.5) * _MAP_RES - _MAP_HALF
        x, y = c[None, :], -c[:, None]  # row 0 is +y
        checker = ((np.floor(x / 0.05) + np.floor(y / 0.05)) % 2).astype(int)
        on_table = (np.abs(x) <= TABLE_HALF) & (np.abs(y) <= TABLE_HALF)
        img = np.where(on_table[..., None], np.stack(_WOOD)[checker], _FLOOR).astype(np.uint8)
        height = np.where(on_table, 0.0, -0.3)
        for r in scene.receptacles:
            base, side, dark = self.colors[r.kind]
            dx, dy = x - r.center[0], y - r.center[1]
            if r.round:
                d = np.sqrt(dx**2 + dy**2) / r.half[0]
                layers = [(d <= 1.0, base, r.rim), (d <= (0.7 if r.kind == "plate" else 0.8), dark if r.kind == "bowl"
                                                          else _shade(base, 0.93), r.floor)]
            else:
                ax, ay = np.abs(dx), np.abs(dy)
                layers = [((ax <= r.half[0]) & (ay <= r.half[1]), base, r.rim),
                          ((ax <= r.half[0] - 0.01) & (ay <= r.half[1] - 0.01), dark, r.floor)]
            for mask, color, z in layers:
                img[mask] = color
                height[mask] = z
        return img, (WRIST_UP - height).astype(np.float32)  # depth below a camera at gripper height 0

    def _wrist(self, scene: Scene) -> tuple[np.ndarray, np.ndarray | None]:
        gx, gy, gz = scene.gripper.tolist()
        cam = gz + WRIST_UP
        scale = cam / self.f  # metres per pixel on the table
        m = self._map.shape[0]
        ix = np.clip(((gx + self.wrist_u * scale + _MAP_HALF) / _MAP_RES).astype(np.intp), 0, m - 1)  # (w,)
        iy = np.clip(((_MAP_HALF - gy + self.wrist_v * scale) / _MAP_RES).astype(np.intp), 0, m - 1)  # (h,)
        img = self._map.take(iy, axis=0).take(ix, axis=1)  # (h, w, 3)
        dep = self._map_depth.take(iy, axis=0).take(ix, axis=1) + np.float32(gz) if self.depth else None
        pos = scene.pos.tolist()
        for i in sorted(range(len(pos)), key=lambda i: pos[i][2]):
            x, y, z = pos[i]
            base, side, _ = self.colors[scene.block_colors[i]]
            self._wrist_square(img, dep, x - gx, y - gy, cam - z, BLOCK_SIZE / 2, side)
            self._wrist_square(img, dep, x - gx, y - gy, cam - z - BLOCK_SIZE, BLOCK_SIZE / 2, base)
        half = scene.width / 2
        for sign in (-1.0, 1.0):
            self._wrist_rect(img, dep, sign * (half + 0.006), 0.0, WRIST_UP - 0.03, 0.006, 0.012, _FINGER)
        return img, dep

    def _wrist_square(self, img, dep, dx, dy, dist, half, color) -> None:
        self._wrist_rect(img, dep, dx, dy, dist, half, half, color)

    def _wrist_rect(self, img, dep, dx, dy, dist, hx, hy, color) -> None:
        """A horizontal rectangle centred (dx, dy) from the camera axis, `dist` below the camera."""
        if dist < 0.01:
            return
        k = self.f / dist
        uc, vc = self.w / 2 + dx * k, self.h / 2 - dy * k
        c0, c1 = max(round(uc - hx * k), 0), min(round(uc + hx * k), self.w)
        r0, r1 = max(round(vc - hy * k), 0), min(round(vc + hy * k), self.h)
        if c0 < c1 and r0 < r1:
            img[r0:r1, c0:c1] = color
            if dep is not None:
                dep[r0:r1, c0:c1] = dist

    # ================================================================ api
    def reset(self, scene: Scene) -> None:
        """Draw what stays put for the episode: receptacles on the table, the wrist map."""
        self._bg = self._table.copy()
        self._bg_depth = self._table_depth.copy()
        for r in sorted(scene.receptacles, key=lambda r: -r.center[1]):
            self._receptacle_agent(self._bg, self._bg_depth, r)
        self._map, self._map_depth = self._draw_map(scene)

    def render(self, scene: Scene) -> dict[str, np.ndarray]:
        """{"image", "wrist_image": (h, w, 3) uint8; with depth "image_depth", "wrist_image_depth": (h, w) float32}."""
        img, dep = self._agent(scene)
        wrist, wdep = self._wrist(scene)
        out = {"image": img, "wrist_image": wrist}
        if self.depth:
            out["image_depth"], out["wrist_image_depth"] = dep, wdep
        return out
