"""Host tensors made during a step (token ids, positions, masks, row indices) copied to the model's
device without making the host wait for the GPU.

A non-blocking copy from ordinary (pageable) host memory need not be asynchronous: the CUDA
driver stages it through pinned memory and may first wait for the stream, i.e. for every kernel
queued before it (CUDA runtime API, "API synchronization behavior"). torch's sync debug mode
does not report that wait. Copied from pinned memory, the copy is queued and the host goes on;
torch's caching host allocator reuses the pinned block once the copy has run.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`, queued without waiting: through pinned memory when it goes from the host
    to a CUDA device; any other move is a plain non-blocking `.to`."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
