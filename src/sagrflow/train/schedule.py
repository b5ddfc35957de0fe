"""Schedules as pure functions of the optimizer step: SA-GR loss weights and the learning rate.

SA-GR phases (DESIGN.md section 4), with A = sagr_phase_a_steps, R = sagr_phase_b_ramp_steps:
  phase A  step < A            alpha = 0: dyn, geo, reg weights 0, fm at its base weight
  phase B  A <= step < A + R   alpha = (step - A + 1) / (R + 1): strictly rising, never 0 nor 1
  phase C  step >= A + R       alpha = 1: base weights
The world weights are alpha * base; fm keeps its base weight throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

PHASE_A, PHASE_B, PHASE_C = 0, 1, 2  # the values of the debug/sagr_schedule/phase metric


@dataclass(frozen=True)
class SagrWeights:
    phase: int
    alpha: float
    fm: float
    dyn: float
    geo: float
    reg: float

    def as_dict(self) -> dict[str, float]:
        return {"fm": self.fm, "dyn": self.dyn, "geo": self.geo, "reg": self.reg}


def sagr_weights(step: int, phase_a_steps: int, ramp_steps: int, base: Mapping[str, float]) -> SagrWeights:
    """Loss weights at optimizer step `step` (0-based); `base` holds {fm, dyn, geo, reg}."""
    if step < phase_a_steps:
        phase, alpha = PHASE_A, 0.0
    elif step < phase_a_steps + ramp_steps:
        phase, alpha = PHASE_B, (step - phase_a_steps + 1) / (ramp_steps + 1)
    else:
        phase, alpha = PHASE_C, 1.0
    return SagrWeights(phase, alpha, float(base["fm"]), alpha * float(base["dyn"]), alpha * float(base["geo"]),
                       alpha * float(base["reg"]))


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
              min_ratio: float = 0.0) -> float:
    """Multiplier of each group's learning rate at step `step`: linear warmup, then cosine or constant.

    Warmup starts at 1/warmup (not 0: a zero-rate first step would be wasted). The cosine
    reaches `min_ratio` at step `total_steps - 1`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown lr schedule {kind!r}: use cosine or constant")
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
