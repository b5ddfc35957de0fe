"""Image preprocessing shared by the data workers and `predict_action`, so both see identical pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_chw_uint8(images: np.ndarray | torch.Tensor, size: tuple[int, int], *, contiguous: bool = True) -> torch.Tensor:
    """(N, h0, w0, 3) or (h0, w0, 3) uint8 HWC -> (N, 3, h, w) or (3, h, w) uint8, resized to `size`.

    Resizing is torch's antialiased bilinear on uint8 (its fast integer path); images
    already at `size` are passed through untouched. `contiguous=False` returns the
    channels-last result as is (same values): for callers that copy it anyway, such as
    collate's stack, which then transposes while it copies instead of copying twice.
    """
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    single = x.ndim == 3
    if single:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, h, w, 3) or (h, w, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)  # (N, 3, h0, w0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    if contiguous:
        x = x.contiguous()
    return x[0] if single else x
