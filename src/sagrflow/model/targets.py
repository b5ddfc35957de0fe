"""Where each sample's t+k target tokens come from, decided on the host once per forward.

A valid pair's t+k tokens come from, in order of preference:
  reuse   another sample of the batch whose t frame is this pair's t+k frame (collate's
          `tk_index`, filled when `datasets.vla_data.chain_length` > 1): its detached tokens
  run     the no-grad target pass (whose VLM part a frozen backbone's cache may skip)
An invalid pair (valid_tk = 0) reads its own detached tokens (DESIGN.md section 3, step 5).

The plan is one small host read of the batch's bookkeeping (valid_tk, tk_index, frame ids)
before any VLM pass, instead of `.any()` / `.nonzero()` syncs in the middle of the forward.

Legend: B batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sagrflow.model.target_cache import Key

_IDS = ("dataset_index", "episode_index", "frame_index", "temporal_delta_k")


@dataclass
class TargetPlan:
    source: list[int]  # (B,) row of cat([current tokens (B), run rows' tokens]) that sample i reads
    run: list[int]  # samples through the target pass, in order: run[j] is row B + j of that table
    reused: int  # samples whose next tokens are another sample's current tokens
    previous: list[int]  # (B,) the sample whose t+k frame is sample j's t frame (its chain predecessor), or -1
    keys_t: list[Key] | None  # cache key of each sample's t frame; None when the batch cannot name frames
    keys_tk: list[Key] | None  # cache key of each sample's t+k frame


def target_plan(batch, valid: torch.Tensor, lang: list[str], has_image_tk: bool = True) -> TargetPlan:
    """A batch (with valid_tk as `valid` (B,), optional tk_index and frame ids) -> its TargetPlan."""
    b = valid.shape[0]
    tk_index = getattr(batch, "tk_index", None)
    cols = [valid > 0, tk_index if tk_index is not None else torch.full((b,), -1, device=valid.device)]
    ids = [getattr(batch, name, None) for name in _IDS]
    named = has_image_tk and all(isinstance(x, torch.Tensor) for x in ids)
    if named:
        cols += ids
    rows = torch.stack([c.to(device=valid.device, dtype=torch.long).reshape(b) for c in cols], 1).tolist()
    source, run, reused, previous = [], [], 0, [-1] * b
    for i, (need, tk, *_) in enumerate(rows):
        if not need:
            source.append(i)
        elif 0 <= tk < b:
            source.append(tk)
            previous[tk] = i
            reused += 1
        else:
            source.append(b + len(run))
            run.append(i)
    keys_t = keys_tk = None
    if named:  # a frame is named by (dataset, episode, frame) and the instruction its prompt holds
        keys_t = [(d, e, f, lang[i]) for i, (_, _, d, e, f, _) in enumerate(rows)]
        keys_tk = [(d, e, f + k, lang[i]) for i, (_, _, d, e, f, k) in enumerate(rows)]
        # tk_index links a predecessor to one copy of a frame that overlapping chains put in the
        # batch twice; the other copies have the same predecessor
        linked = {keys_t[j]: p for j, p in enumerate(previous) if p >= 0}
        previous = [p if p >= 0 else linked.get(keys_t[j], -1) for j, p in enumerate(previous)]
    return TargetPlan(source, run, reused, previous, keys_t, keys_tk)
