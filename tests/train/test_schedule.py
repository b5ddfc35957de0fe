from __future__ import annotations

import math

import pytest

from sagrflow.train.schedule import PHASE_A, PHASE_B, PHASE_C, lr_factor, sagr_weights

BASE = {"fm": 1.0, "dyn": 0.2, "geo": 0.1, "reg": 1e-3}


def test_phase_boundaries():
    a, ramp = 3, 4
    w = {s: sagr_weights(s, a, ramp, BASE) for s in range(10)}
    # phase A: world terms off, fm on
    assert w[0].phase == w[a - 1].phase == PHASE_A
    assert (w[a - 1].alpha, w[a - 1].dyn, w[a - 1].geo, w[a - 1].reg, w[a - 1].fm) == (0.0, 0.0, 0.0, 0.0, 1.0)
    # phase B: first and last ramp steps, strictly between 0 and the base weights
    assert w[a].phase == w[a + ramp - 1].phase == PHASE_B
    assert w[a].alpha == pytest.approx(1 / 5) and w[a + ramp - 1].alpha == pytest.approx(4 / 5)
    assert w[a].dyn == pytest.approx(0.2 / 5) and w[a].geo == pytest.approx(0.1 / 5) and w[a].reg == pytest.approx(1e-3 / 5)
    alphas = [w[s].alpha for s in range(a, a + ramp)]
    assert alphas == sorted(alphas) and len(set(alphas)) == ramp
    # phase C: base weights
    assert w[a + ramp].phase == PHASE_C and w[a + ramp].as_dict() == BASE and w[a + ramp].alpha == 1.0


def test_defaults_start_in_phase_c():
    w = sagr_weights(0, 0, 0, BASE)
    assert w.phase == PHASE_C and w.as_dict() == BASE
    w = sagr_weights(0, 0, 2, BASE)  # no phase A: the ramp starts at step 0
    assert w.phase == PHASE_B and w.alpha == pytest.approx(1 / 3)


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(99, 100, warmup_steps=10, min_ratio=0.1) == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2
    assert lr_factor(int(mid), 100, warmup_steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi * int(mid - 10) / 89)))
    assert lr_factor(50, 100, kind="constant") == 1.0
