"""Qwen-VL pixel preprocessing in torch, on the images' own device.

The transformers image processor (PIL backend) converts every camera image to PIL, then
normalizes and patchifies it in numpy, one image at a time: at 224 px that is a few ms per
image on the host, which dominated a GPU training step (two passes of B x C images). Our
images already arrive at the backbone's size as uint8 tensors, so when that size needs no
resize (each side already a multiple of patch * merge and within the processor's pixel
bounds) the processor reduces to rescale, normalize and a reshape, done here for the whole
batch at once. `qwen_pixels` returns None otherwise, and the caller uses the processor.

The result equals the processor's output to float32 rounding (tests/model/test_pixels.py).

Legend: N images, h, w their height and width, p patch, m merge, T temporal patch.
"""

from __future__ import annotations

import torch

from sagrflow.core.device import to_device


def _no_resize(h: int, w: int, factor: int, min_pixels: int | None, max_pixels: int | None) -> bool:
    """True when Qwen's smart_resize leaves an h x w image as it is."""
    if h % factor or w % factor:
        return False
    return (min_pixels is None or h * w >= min_pixels) and (max_pixels is None or h * w <= max_pixels)


def qwen_pixels(images: torch.Tensor, processor) -> dict[str, torch.Tensor] | None:
    """(N, 3, h, w) uint8 images and a Qwen2-VL-style image processor ->
    {"pixel_values": (N * h/p * w/p, 3 * T * p * p) float32 on the images' device,
    "image_grid_thw": (N, 3) int64 on the host},
    or None when the processor would resize these images (the caller then runs the processor).
    """
    p, m, tp = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    n, c, h, w = images.shape
    size = processor.size
    if c != 3 or not (processor.do_rescale and processor.do_normalize):
        return None
    if processor.do_resize and not _no_resize(h, w, p * m, size.shortest_edge, size.longest_edge):
        return None
    # made on the host and copied without blocking: torch.tensor(..., device=cuda) waits for the GPU
    mean, std = (to_device(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1), images.device)
                 for v in (processor.image_mean, processor.image_std))
    x = (images.float() * float(processor.rescale_factor) - mean) / std  # (N, 3, h, w)
    gh, gw = h // p, w // p
    x = x.view(n, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (N, gh/m, gw/m, m, m, C, p, p): merge groups stay contiguous
    x = x.unsqueeze(6).expand(n, gh // m, gw // m, m, m, c, tp, p, p)  # a still image repeats over time
    pixel_values = x.reshape(n * gh * gw, c * tp * p * p)
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.int64)  # metadata, read on the host
    return {"pixel_values": pixel_values, "image_grid_thw": grid}
