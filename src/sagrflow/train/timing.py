"""Wall time of the two VLM passes of a training forward, measured by hooks on the backbone.

The pass with gradients is the one on image_t; the pass under `no_grad` is the t+k target
pass. On CUDA the hooks record events (no sync); the trainer calls `collect` only at the
steps it logs, as reading the events waits for the GPU.
"""

from __future__ import annotations

import time

import torch
from torch import nn


class VlmPassTimer:
    def __init__(self, backbone: nn.Module):
        self._cuda = next(backbone.parameters()).is_cuda
        self._open: list = []
        self._done: dict[str, list] = {"t": [], "tk": []}
        self._handles = [backbone.register_forward_pre_hook(self._start), backbone.register_forward_hook(self._stop)]

    def _now(self):
        if self._cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _start(self, module, args) -> None:
        self._open.append(("t" if torch.is_grad_enabled() else "tk", self._now()))

    def _stop(self, module, args, output) -> None:
        which, start = self._open.pop()
        self._done[which].append((start, self._now()))

    def collect(self, steps: int = 1) -> dict[str, float]:
        """Seconds per step spent in each pass, over the `steps` steps since the last call: {"t": s, "tk": s}."""
        if self._cuda:
            torch.cuda.synchronize()
        out = {}
        for which, spans in self._done.items():
            if self._cuda:
                out[which] = sum(a.elapsed_time(b) for a, b in spans) / 1000.0 / steps
            else:
                out[which] = sum(b - a for a, b in spans) / steps
            spans.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
