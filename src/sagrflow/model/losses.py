"""Masked reductions of the per-sample loss terms (DESIGN.md section 3).

`forward` returns per-sample terms; `reduce_losses` is the one place they become scalars:
  fm                  mean over samples (already masked by action_mask within each sample)
  dyn, geo, reg       mean over samples with valid_tk = 1; 0 when there is none (never NaN)
  total               sum of weight * term

Legend: B batch, H horizon, A action dim.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

LOSS_TERMS = ("fm", "dyn", "geo", "reg")
WORLD_TERMS = ("dyn", "geo", "reg")


def masked_fm_loss(v: torch.Tensor, target: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """v, target (B, H, A), action_mask (B, H) -> (B,) MSE over the unpadded steps of each sample."""
    keep = action_mask > 0  # (B, H)
    sq = torch.where(keep.unsqueeze(-1), (v - target).pow(2), torch.zeros((), dtype=v.dtype, device=v.device))
    count = keep.sum(1).clamp_min(1) * v.shape[-1]  # (B,)
    return sq.sum(dim=(1, 2)) / count


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) values, (B,) 0/1 mask -> scalar mean over mask = 1; 0 if none.

    `where`, not multiplication: a masked-out NaN or inf must not leak (0 * inf = NaN).
    """
    keep = mask > 0
    picked = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return picked.sum() / keep.sum().clamp_min(1).to(values.dtype)


def reduce_losses(out: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> tuple[torch.Tensor, dict]:
    """`forward`'s output and {fm, dyn, geo, reg: weight} -> (total, {loss_<term>: scalar}).

    The trainer passes the weights of its SA-GR schedule step; missing names are an error.
    """
    missing = [k for k in LOSS_TERMS if k not in weights]
    if missing:
        raise ValueError(f"reduce_losses needs weights for {missing}")
    terms = {"fm": out["loss_fm"].mean()}
    for name in WORLD_TERMS:
        terms[name] = masked_mean(out[f"loss_{name}"], out["valid_tk"])
    total = sum(float(weights[k]) * terms[k] for k in LOSS_TERMS)
    return total, {f"loss_{k}": v for k, v in terms.items()}
