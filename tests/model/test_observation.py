"""The observation summary: where each visual token sits, and a conditioning that depends on it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sagrflow.model.backbone import VLMBackbone
from sagrflow.model.config import ActionModelConfig
from sagrflow.model.observation import MAX_CAMERAS, ObservationSummary, keypoints

from .conftest import build_policy, make_batch


@pytest.mark.parametrize("arch, grid, extra", [("qwen2_5_vl", 2, 0), ("qwen3_vl", 2, 0), ("llava", 2, 0)])
def test_visual_positions_follow_cameras_rows_and_columns(tiny_dirs, arch, grid, extra):
    bb = VLMBackbone.from_pretrained(tiny_dirs[arch])
    size = 64 if arch == "qwen3_vl" else 56
    out = bb(torch.zeros(2, 2, 3, size, size, dtype=torch.uint8), ["go left", "a longer instruction here"])
    pos = out.visual_pos[out.visual_mask].view(2, -1, 3)  # (B, V, 3)
    assert torch.equal(pos[0], pos[1])  # prompts of different lengths: the same grid
    rows = (torch.arange(grid * grid) // grid + 0.5) / grid
    cols = (torch.arange(grid * grid) % grid + 0.5) / grid
    for cam in range(2):
        block = pos[0, cam * (grid * grid + extra):(cam + 1) * (grid * grid + extra)]
        assert torch.all(block[:, 0] == cam)
        torch.testing.assert_close(block[extra:, 1], rows)
        torch.testing.assert_close(block[extra:, 2], cols)
    assert torch.all(out.visual_pos[~out.visual_mask] == 0)


def _summary_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 10, 16, generator=g)
    visual = torch.tensor([[False, True, True, True, True, True, True, True, True, False]] * 2)
    pos = torch.zeros(2, 10, 3)
    cells = torch.tensor([(c, (r + 0.5) / 2, (k + 0.5) / 2) for c in range(2) for r in range(2) for k in range(2)])
    pos[visual] = cells.repeat(2, 1)
    text = torch.zeros_like(visual)
    text[:, 0] = True  # token 0 is the instruction, token 9 padding
    return hidden, visual, pos, text


def test_summary_sees_where_a_token_is_and_the_instruction():
    torch.manual_seed(0)
    summary = ObservationSummary(16, 8, basis=2)
    hidden, visual, pos, text = _summary_inputs()
    base = summary(hidden, visual, pos, text, 2)
    swapped = hidden.clone()
    swapped[:, [1, 2]] = hidden[:, [2, 1]]  # two tokens of camera 0 trade places: same set, other layout
    assert not torch.allclose(summary(swapped, visual, pos, text, 2), base, atol=1e-4)
    padding = hidden.clone()
    padding[:, 9] = torch.randn(2, 16)  # padding does not count
    torch.testing.assert_close(summary(padding, visual, pos, text, 2), base)
    instruction = hidden.clone()
    instruction[:, 0] = torch.randn(2, 16)  # another instruction: another summary of the same image
    assert not torch.allclose(summary(instruction, visual, pos, text, 2), base, atol=1e-4)


def test_summary_rejects_more_cameras_than_it_pools(tiny_dir):
    summary = ObservationSummary(16, 8, basis=2)
    hidden, visual, pos, text = _summary_inputs()
    with pytest.raises(ValueError, match="observation_basis"):
        summary(hidden, visual, pos, text, MAX_CAMERAS + 1)
    # through the policy: the backbone reports the batch's cameras, checked before any pooling
    policy = build_policy(tiny_dir)
    for cameras in (2, 3):
        images = torch.randint(0, 256, (1, cameras, 3, 56, 56), dtype=torch.uint8)
        assert policy.backbone(images, ["open it"]).cameras == cameras
    batch = make_batch()
    wide = replace(batch, image_t=batch.image_t[:, :1].expand(-1, MAX_CAMERAS + 1, -1, -1, -1).contiguous())
    with pytest.raises(ValueError, match=f"the batch has {MAX_CAMERAS + 1}"):
        policy(wide)


def test_observation_basis_is_validated_and_zero_turns_the_summary_off(tiny_dir):
    with pytest.raises(ValueError, match="observation_basis"):
        ActionModelConfig(action_horizon=8, action_dim=7, observation_basis=-1)
    policy = build_policy(tiny_dir, observation_basis=0)
    assert policy.head.observation is None
    out = policy(make_batch())
    assert torch.isfinite(out["loss_fm"]).all()
    with_summary = build_policy(tiny_dir)
    opt = torch.optim.SGD(with_summary.parameters(), lr=0.1)
    for _ in range(2):  # AdaLN starts at zero: the summary gets gradients once its modulations moved
        opt.zero_grad()
        with_summary(make_batch())["loss_fm"].mean().backward()
        opt.step()
    assert with_summary.head.observation.proj.weight.grad.abs().sum() > 0


def test_keypoints_read_where_a_feature_fires_per_camera():
    # 2 cameras of a 2x2 grid (tokens 1-4, 5-8), token 0 text; one feature
    _, visual, pos, _ = _summary_inputs()
    cam = torch.nn.functional.one_hot(pos[..., 0].long(), MAX_CAMERAS).float() * visual.unsqueeze(-1)
    logits = torch.zeros(2, 10, 1)
    logits[0, 2] = 50.0  # camera 0, row 0, column 1
    logits[0, 0] = 99.0  # a text token: not a place in any camera
    logits[1, 5] = logits[1, 6] = 50.0  # camera 1, row 0, columns 0 and 1 alike: between them
    points = keypoints(logits, cam, pos[..., 1:3])  # (B, C, F, 2), in [-1, 1]
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(points[1, 1, 0], torch.tensor([-0.5, 0.0]))
    torch.testing.assert_close(points[0, 1, 0], torch.tensor([0.0, 0.0]))  # flat logits: the grid's centre
    assert torch.all(points[:, 2:] == 0)  # cameras without tokens, not NaN


def test_observation_layer_picks_the_hidden_state_and_is_validated(tiny_dir):
    policy = build_policy(tiny_dir).eval()  # default: layer 0, the vision tower's tokens
    batch = make_batch()
    with torch.no_grad():
        enc = policy.encode(batch.image_t, list(batch.lang))
        vlm = enc.vlm
        expect = policy.head.observation(vlm.hidden_states[0], vlm.visual_mask, vlm.visual_pos, vlm.text_mask, vlm.cameras)
        torch.testing.assert_close(enc.observation, expect)
        last = policy.head.observation(vlm.last_hidden_state, vlm.visual_mask, vlm.visual_pos, vlm.text_mask, vlm.cameras)
        assert not torch.allclose(enc.observation, last, atol=1e-4)
    depth = policy.backbone.num_layers
    with pytest.raises(ValueError, match="observation_layer"):
        build_policy(tiny_dir, observation_layer=depth + 1)
    build_policy(tiny_dir, observation_layer=-(depth + 1))  # the first of the hidden states, counted from the end
