"""Replay a fixed-shape GPU computation as a CUDA graph: one launch instead of hundreds.

At inference the Euler loop of `predict_action` runs the DiT N times on a handful of tokens;
each step is hundreds of tiny kernels, and on a GPU the host's launching, not the GPU's work,
sets the time. A CUDA graph records the kernels of one call once and replays them with a
single launch. The recording reads its inputs from fixed buffers, so each call copies its
tensors into them; the outputs are cloned out of the graph's own buffers.

A graph is keyed by the caller's key (shapes and flags) and by where every parameter lives:
moving or reloading weights makes a new graph rather than replaying stale addresses. In-place
weight updates are seen by the replay, as in eager execution. A capture that fails (an op a
graph cannot hold) is reported once, and that key then runs eagerly.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn


class _Graph:
    """Everything runs with the inputs' GPU as the current device: a model on cuda:1 while cuda:0 is
    current would otherwise run off the capture stream, leaving an empty graph."""

    def __init__(self, fn: Callable, inputs: Sequence[torch.Tensor | None]):
        self.device = next(t for t in inputs if t is not None).device
        autocast = dict(device_type="cuda", enabled=torch.is_autocast_enabled("cuda"),
                        dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)  # a cache cannot live in a graph
        with torch.cuda.device(self.device):
            self.inputs = [None if t is None else t.clone() for t in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.autocast(**autocast):
                for _ in range(2):  # warm-up off the capture: lazy initialisations, workspace allocations
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # the outer stream context restores the caller's stream even when a failed capture raises on exit
            with torch.cuda.stream(side), torch.cuda.graph(self.graph, stream=side), torch.autocast(**autocast):
                self.outputs = fn(*self.inputs)

    def __call__(self, inputs: Sequence[torch.Tensor | None]):
        with torch.cuda.device(self.device):
            for buffer, t in zip(self.inputs, inputs, strict=True):
                if buffer is not None:
                    buffer.copy_(t)
            self.graph.replay()
            return tuple(t.clone() for t in self.outputs)


class GraphCache:
    """Recorded graphs of `fn(*inputs) -> tuple of tensors`, the most recent `size` kept."""

    def __init__(self, size: int = 16):
        self.size = size
        self.graphs: OrderedDict[Hashable, _Graph | None] = OrderedDict()  # None: capture failed, run eagerly

    def run(self, key: Hashable, module: nn.Module, fn: Callable, inputs: Sequence[torch.Tensor | None]):
        """fn(*inputs) from a replay when the inputs live on a CUDA device, else called directly."""
        first = next((t for t in inputs if t is not None), None)
        if first is None or first.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return fn(*inputs)
        shapes = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in inputs)
        where = tuple(p.data_ptr() for p in module.parameters())
        full = (key, shapes, where, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        if full not in self.graphs:
            try:
                self.graphs[full] = _Graph(fn, inputs)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to the eager call
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly", stacklevel=2)
                self.graphs[full] = None
            while len(self.graphs) > self.size:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(full)
        graph = self.graphs[full]
        return fn(*inputs) if graph is None else graph(inputs)
