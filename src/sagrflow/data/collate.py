"""Collate temporal samples into the typed `Batch`: the one place raw samples become tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import get_worker_info

from sagrflow.core import batch as keys
from sagrflow.core.batch import Batch

# list[str] -> (input_ids (B, L), attention_mask (B, L))
Tokenizer = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def _images(samples: Sequence[dict], key: str) -> torch.Tensor:  # -> (B, C, 3, h, w) uint8
    """One copy per batch: every camera image straight into the batch tensor, which in a
    DataLoader worker lives in shared memory already (as torch's default_collate does), so
    handing it to the main process copies nothing more.

    The batch keeps the workers' channels-last memory: shape (B, C, 3, h, w), strides of a
    (B, C, h, w, 3) buffer. Images resized by `to_chw_uint8(contiguous=False)` are such
    views, so the copy is a plain memcpy per image instead of a byte-wise transpose (which
    cost more than the resize); the model reads the pixels through `reshape` / elementwise
    ops, which accept any layout.
    """
    images = [img for s in samples for img in s[key]]  # B*C of (3, h, w)
    cameras = {len(s[key]) for s in samples}
    shapes = {tuple(img.shape) for img in images}
    if len(cameras) != 1 or len(shapes) != 1:
        raise ValueError(f"cannot batch {key}: images of shapes {sorted(shapes)}, cameras per sample {sorted(cameras)}; "
                         "set one image_size for the mix (and one camera list)")
    c3, h, w = shapes.pop()
    shape = (len(samples) * cameras.pop(), h, w, c3)  # (B*C, h, w, 3)
    out = None
    if get_worker_info() is not None:
        storage = images[0]._typed_storage()._new_shared(math.prod(shape), device=images[0].device)
        out = images[0].new(storage).resize_(shape)
    flat = torch.stack([img.permute(1, 2, 0) for img in images], out=out)  # (B*C, h, w, 3)
    return flat.view(len(samples), -1, h, w, c3).permute(0, 1, 4, 2, 3)  # (B, C, 3, h, w)


def tk_index(samples: Sequence[dict]) -> torch.Tensor:  # -> (B,) int64
    """For each valid sample, the position of the sample whose t is its t+k (same dataset and episode)
    and whose instruction is its own: the target pass encodes the t+k frame with the instruction at t,
    which differs from the t+k sample's where an episode's task changes on the way."""
    def key(s: dict, frame: int) -> tuple:
        return s.get(keys.DATASET_INDEX, 0), s[keys.EPISODE_INDEX], frame, s.get(keys.LANG)

    where = {key(s, s[keys.FRAME_INDEX]): j for j, s in enumerate(samples)}
    out = [where.get(key(s, s[keys.FRAME_INDEX] + s[keys.TEMPORAL_DELTA_K]), -1) if s[keys.VALID_TK] else -1
           for s in samples]
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
