"""The VLM pass timer: which pass a call is, and the per-step average the trainer logs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sagrflow.train import timing


def test_pass_times_are_per_step_averages_since_the_last_read(monkeypatch):
    clock = itertools.count()  # each reading of the clock is 1 s after the last
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    module = nn.Linear(2, 2)
    timer = timing.VlmPassTimer(module)
    x = torch.zeros(1, 2)
    for _ in range(2):  # two steps, each a pass with gradients (1 s) and a no-grad pass (1 s)
        module(x)
        with torch.no_grad():
            module(x)
    assert timer.collect(2) == {"t": pytest.approx(1.0), "tk": pytest.approx(1.0)}
    module(x)
    assert timer.collect() == {"t": pytest.approx(1.0), "tk": 0.0}  # read spans are not read twice
    timer.close()
    module(x)
    assert timer.collect() == {"t": 0.0, "tk": 0.0}
