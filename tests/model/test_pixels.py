"""The torch pixel path equals the transformers image processor wherever it is taken."""

import pytest
import torch

from sagrflow.model.backbone import VLMBackbone
from sagrflow.model.pixels import qwen_pixels


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def processor(request):
    return VLMBackbone.from_pretrained(f"tiny:{request.param}").image_processor


def _reference(processor, images: torch.Tensor) -> dict:
    return dict(processor(images=list(images), return_tensors="pt"))


@pytest.mark.parametrize("hw", [(224, 224), (64, 128), (112, 224)])
def test_matches_the_processor_where_no_resize_is_needed(processor, hw):
    unit = processor.patch_size * processor.merge_size
    h, w = (round(s / unit) * unit for s in hw)
    images = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours, ref = qwen_pixels(images, processor), _reference(processor, images)
    assert ours is not None
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"].float(), atol=1e-5, rtol=0)


def test_declines_sizes_the_processor_would_resize(processor):
    unit = processor.patch_size * processor.merge_size
    assert qwen_pixels(torch.zeros(1, 3, unit + 3, 2 * unit, dtype=torch.uint8), processor) is None
    too_big = int((processor.size.longest_edge ** 0.5) // unit + 2) * unit
    assert qwen_pixels(torch.zeros(1, 3, too_big, too_big, dtype=torch.uint8), processor) is None
