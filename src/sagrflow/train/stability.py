"""Numerical safety: finiteness checks, the first-step magnitude report, the non-finite finder.

The trainer never applies an update computed from a non-finite loss or gradient (it
skips the step and counts it) and never writes non-finite weights to a checkpoint.
`NonFiniteFinder` is the debug tool (`trainer.detect_anomaly`): it checks the batch and
the parameters, then hooks every module and stops at the first one whose output is not
finite, naming it and saying whether its inputs were still finite.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    pass


def is_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())  # a device sync


def nonfinite_params(model: nn.Module, grads: bool = False, limit: int = 10) -> list[str]:
    """Names of parameters (or their gradients) holding NaN or inf, at most `limit`."""
    bad = []
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None and not is_finite(t.detach()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif hasattr(value, "to_tuple"):  # transformers ModelOutput
        yield from _tensors(value.to_tuple())


def _all_finite(value) -> bool:
    return all(is_finite(t.detach()) for t in _tensors(value) if t.is_floating_point())


class NonFiniteFinder:
    """`with NonFiniteFinder(model): model(batch)` raises NonFiniteError at the first non-finite output."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list = []

    def check_batch(self, batch) -> None:
        for f in fields(batch):
            value = getattr(batch, f.name)
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not is_finite(value):
                raise NonFiniteError(f"first non-finite tensor: batch.{f.name} {tuple(value.shape)} (the data)")

    def _hook(self, name: str):
        def hook(module, args, output):
            if not _all_finite(output):
                where = "its inputs were finite" if _all_finite(args) else "its inputs were already non-finite"
                raise NonFiniteError(f"first non-finite tensor: output of module {name!r} "
                                     f"({type(module).__name__}); {where}")
        return hook

    def __enter__(self) -> NonFiniteFinder:
        bad = nonfinite_params(self.model)
        if bad:
            raise NonFiniteError(f"first non-finite tensor: parameter(s) {bad}")
        # post-order: a child's hook runs before its parent's, so the innermost culprit is named
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name or "<model>")))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def first_step_report(values: dict[str, float], group_grad_norms: dict[str, float], path: Path | None = None,
                      large: float = 1e3) -> str:
    """The magnitudes of step 0 (absmax of task_tokens, pred_velocity, drift, the losses, grad norms per
    parameter group) as a table; written to `path` as JSON. Values above `large` are flagged."""
    rows = {**values, **{f"grad_norm/{g}": v for g, v in group_grad_norms.items()}}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2))
    width = max(len(k) for k in rows)
    lines = ["first-step magnitudes:"]
    for k, v in rows.items():
        flag = "  <-- large" if abs(v) > large or v != v else ""
        lines.append(f"  {k:<{width}}  {v:.4g}{flag}")
    return "\n".join(lines)


def group_grad_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    out = {}
    for g in optimizer.param_groups:
        grads = [p.grad.detach().float().norm() for p in g["params"] if p.grad is not None]
        out[g.get("name", str(len(out)))] = float(torch.stack(grads).norm()) if grads else 0.0
    return out
