"""Collate temporal samples into the typed `Batch`: the one place raw samples become tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sagrflow.core import batch as keys
from sagrflow.core.batch import Batch

# list[str] -> (input_ids (B, L), attention_mask (B, L))
Tokenizer = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def _images(samples: Sequence[dict], key: str) -> torch.Tensor:  # -> (B, C, 3, h, w) uint8
    try:
        return torch.stack([torch.stack(s[key]) for s in samples])
    except RuntimeError as exc:
        shapes = sorted({tuple(img.shape) for s in samples for img in s[key]})
        raise ValueError(f"cannot batch {key}: images of shapes {shapes}; set one image_size for the mix") from exc


def tk_index(samples: Sequence[dict]) -> torch.Tensor:  # -> (B,) int64
    """For each valid sample, the position of the sample whose t is its t+k (same dataset and episode)."""
    where = {(s.get(keys.DATASET_INDEX, 0), s[keys.EPISODE_INDEX], s[keys.FRAME_INDEX]): j for j, s in enumerate(samples)}
    out = [
        where.get((s.get(keys.DATASET_INDEX, 0), s[keys.EPISODE_INDEX], s[keys.FRAME_INDEX] + s[keys.TEMPORAL_DELTA_K]), -1)
        if s[keys.VALID_TK] else -1
        for s in samples
    ]
    return torch.tensor(out, dtype=torch.int64)


def collate(samples: Sequence[dict], tokenizer: Tokenizer | None = None) -> Batch:
    if not samples:
        raise ValueError("collate got an empty list of samples")
    ks = {int(s[keys.TEMPORAL_DELTA_K]) for s in samples}
    if len(ks) != 1:
        raise ValueError(f"one batch must share temporal_delta_k, got {sorted(ks)}")
    has_state = keys.STATE_T in samples[0]
    lang = tuple(s[keys.LANG] for s in samples)
    lang_ids = lang_mask = None
    if tokenizer is not None:
        lang_ids, lang_mask = tokenizer(list(lang))

    def ints(key: str) -> torch.Tensor:
        return torch.tensor([int(s.get(key, 0)) for s in samples], dtype=torch.int64)

    return Batch(
        image_t=_images(samples, keys.IMAGE_T),
        image_tk=_images(samples, keys.IMAGE_TK),
        valid_tk=torch.tensor([float(s[keys.VALID_TK]) for s in samples], dtype=torch.float32),
        action=torch.stack([s[keys.ACTION] for s in samples]).float(),
        action_mask=torch.stack([s[keys.ACTION_MASK] for s in samples]).float(),
        temporal_delta_k=ints(keys.TEMPORAL_DELTA_K),
        dataset_index=ints(keys.DATASET_INDEX),
        episode_index=ints(keys.EPISODE_INDEX),
        frame_index=ints(keys.FRAME_INDEX),
        lang=lang,
        state_t=torch.stack([s[keys.STATE_T] for s in samples]).float() if has_state else None,
        state_tk=torch.stack([s[keys.STATE_TK] for s in samples]).float() if has_state else None,
        lang_ids=lang_ids,
        lang_mask=lang_mask,
        tk_index=tk_index(samples),
    )
