"""The trainer's reduction: each micro-batch's exact share of the whole step's loss.

The loss of one optimizer step is the large-batch loss over every sample of every
micro-batch on every rank (DESIGN.md section 3's reduction):
  fm                 mean over all samples
  dyn, geo, reg      mean over the samples with valid_tk = 1 (0 if there is none)
A micro-batch's share divides its sums by the step's global counts, not by its own:
averaging per-micro-batch masked means would weight a micro-batch with 1 valid sample
like one with 8. The shares add up to the large-batch loss; under DDP (which averages
gradients over ranks) each share is scaled by the world size so the average is that sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sagrflow.model.losses import LOSS_TERMS, WORLD_TERMS


def loss_share(out: Mapping[str, torch.Tensor], weights: Mapping[str, float], n_samples: torch.Tensor,
               n_valid: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`forward`'s per-sample terms of one micro-batch -> (weighted share, {term: share}).

    n_samples, n_valid: scalar tensors, the step's totals over all micro-batches and ranks.
    """
    terms = {"fm": out["loss_fm"].float().sum() / n_samples}
    for name in WORLD_TERMS:
        terms[name] = valid_share(out[f"loss_{name}"], out["valid_tk"], n_valid)
    terms = {k: v * scale for k, v in terms.items()}
    total = sum(float(weights[k]) * terms[k] for k in LOSS_TERMS)
    return total, terms


def valid_share(values: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values of one micro-batch, (B,) valid_tk -> their sum over the valid samples
    divided by the step's global count of valid samples (scalar; 0 when there is none)."""
    # where, not multiplication: a masked-out inf must not become NaN (0 * inf)
    picked = torch.where(valid > 0, values.float(), torch.zeros((), dtype=torch.float32, device=values.device))
    return picked.sum() / n_valid.clamp_min(1)
