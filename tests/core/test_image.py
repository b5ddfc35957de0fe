import numpy as np
import pytest
import torch

from sagrflow.core.image import to_chw_uint8


@pytest.mark.parametrize("shape", [(2, 40, 30, 3), (40, 30, 3)])
def test_channels_last_result_has_the_same_values(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    a = to_chw_uint8(images, (24, 20))
    b = to_chw_uint8(images, (24, 20), contiguous=False)
    assert a.is_contiguous() and a.shape == b.shape == (*shape[:-3], 3, 24, 20)
    assert torch.equal(a, b)


def test_images_already_at_size_pass_through_unchanged():
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = to_chw_uint8(images, (16, 16))
    assert torch.equal(out, torch.from_numpy(images).permute(0, 3, 1, 2))
