"""to_device: host tensors reach the model's device through pinned memory, without a wait."""

import pytest
import torch

from sagrflow.core.device import to_device


def test_a_move_on_the_host_is_a_plain_copy():
    t = torch.arange(6).view(2, 3)
    out = to_device(t, "cpu")
    assert torch.equal(out, t) and not t.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need a CUDA device")
def test_host_tensors_reach_the_gpu_through_pinned_memory(monkeypatch):
    pinned = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: (pinned.append(self.shape), real(self, *a, **k))[1])
    t = torch.randn(64, 160, 3)
    out = to_device(t, "cuda")
    assert out.device.type == "cuda" and torch.equal(out.cpu(), t)
    assert pinned == [t.shape]  # pageable: pinned first
    already = real(torch.randn(5))
    assert torch.equal(to_device(already, "cuda").cpu(), already) and len(pinned) == 1  # pinned: as it is
    assert to_device(out, "cuda") is out  # on the device already: no copy
