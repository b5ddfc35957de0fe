"""Shared blocks: attention with repeats folded into queries, AdaLN start, drift bound and zero."""

import torch

from sagrflow.model.action_head import DriftHead
from sagrflow.model.anchor import SemanticAnchor
from sagrflow.model.config import ActionModelConfig
from sagrflow.model.dit import AdaLN, Attention


def test_repeats_sharing_keys_equal_repeated_context():
    torch.manual_seed(0)
    attn = Attention(32, 4, kv_dim=16)
    ctx, mask = torch.randn(3, 10, 16), torch.rand(3, 10) > 0.3
    mask[:, 0] = True
    x = torch.randn(6, 5, 32)  # 3 samples x R=2, ordered as repeat_interleave
    shared = attn.attend(x, attn.project_kv(ctx, mask))
    copied = attn.attend(x, attn.project_kv(ctx.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)))
    torch.testing.assert_close(shared, copied, atol=1e-6, rtol=1e-5)


def test_masked_keys_are_never_attended():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    ctx, mask = torch.randn(1, 6, 16), torch.tensor([[True, True, True, False, False, False]])
    changed = ctx.clone()
    changed[:, 3:] = 1e4
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(attn.attend(x, attn.project_kv(ctx, mask)),
                               attn.attend(x, attn.project_kv(changed, mask)))


def test_adaln_starts_as_plain_layernorm():
    ada = AdaLN(8, 4)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ada(x, torch.randn(2, 4)), torch.nn.functional.layer_norm(x, (8,)))


def test_drift_is_bounded_vanishes_at_clean_data_and_is_zero_without_residual():
    cfg = ActionModelConfig(dit_width=16, dit_heads=2, drift_eta=0.3)
    drift = DriftHead(cfg)
    residual, temb = torch.randn(4, 8, 16) * 100, torch.randn(4, 16)
    t = torch.tensor([0.0, 0.5, 0.9, 1.0])
    out = drift(residual, t, temb)
    assert out.shape == (4, cfg.action_horizon, cfg.action_dim)
    bound = (0.3 * (1 - t)).view(-1, 1, 1)
    assert (out.abs() <= bound + 1e-7).all() and out[3].abs().max() == 0
    assert out[0].abs().max() > 0
    assert drift(torch.zeros_like(residual), t, temb).abs().max() == 0


def test_teacher_world_prediction_once_per_sample_equals_every_repeat():
    """With teacher actions the R repeats of a sample are identical world-predictor rows: the head predicts
    once per sample and repeats; losses and gradients equal running every row."""
    from sagrflow.model.action_head import ActionHead

    torch.manual_seed(0)
    b, r = 3, 2
    cfg = ActionModelConfig(dit_width=16, dit_heads=2, state_dim=8, repeated_diffusion_steps=r, world_depth=1)
    head = ActionHead(cfg, vlm_dim=16, depth=1)
    vl, mask = [torch.randn(b, 5, 16)], torch.ones(b, 5, dtype=torch.bool)
    actions, state = torch.randn(b, 8, 7).repeat_interleave(r, 0), torch.randn(b, 8).repeat_interleave(r, 0)
    tokens = torch.randn(b, 4, 16, requires_grad=True)
    tokens_next = torch.randn(b, 4, 16).repeat_interleave(r, 0)
    valid, amask = torch.ones(b * r), torch.ones(b * r, 8)
    out = head(vl, actions, state, mask, tokens.repeat_interleave(r, 0), tokens_next, valid, amask, repeats=r)
    (grad,) = torch.autograd.grad(out["loss_dyn"].sum(), tokens)
    every_row = head.predict_next(tokens.repeat_interleave(r, 0), actions, state, None)
    expected = (every_row - tokens_next).pow(2).mean(dim=(1, 2))
    (expected_grad,) = torch.autograd.grad(expected.sum(), tokens)
    torch.testing.assert_close(out["loss_dyn"], expected)
    torch.testing.assert_close(grad, expected_grad)


def test_task_tokens_keep_their_scale_whatever_the_vlm_scale():
    """The world losses compare task tokens in absolute units: the anchor hands them over
    layer-normalized, so a VLM whose activations grow cannot grow the losses with them."""
    torch.manual_seed(0)
    anchor = SemanticAnchor(vlm_dim=24, width=16, heads=2, num_tokens=4, geometry=False)
    hidden = torch.randn(2, 10, 24)
    visual = torch.zeros(2, 10, dtype=torch.bool)
    visual[:, :6] = True
    with torch.no_grad():
        for scale in (1.0, 100.0):
            tokens = anchor(hidden * scale, visual, ~visual)  # (2, 4, 16)
            torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


def test_geo_loss_is_a_weighted_mean_over_width_not_a_sum():
    """loss_geo = 0.5 r^T W r of the pooled residual, W = softmax(geo_logits) (trace 1): the same
    per-dimension residual gives the same loss at width 16 and 256, and W reweights it."""
    from sagrflow.model.action_head import ActionHead

    def geo(width: int, logits: torch.Tensor | None = None) -> torch.Tensor:
        torch.manual_seed(0)
        cfg = ActionModelConfig(dit_width=width, dit_heads=2, state_dim=0, world_depth=1)
        head = ActionHead(cfg, vlm_dim=16, depth=1)
        if logits is not None:
            head.geo_logits.data.copy_(logits)
        with torch.no_grad():  # the world predictor outputs delta = 0: pred_next = task_tokens
            head.world.out.weight.zero_()
            head.world.out.bias.zero_()
        b = 2
        tokens = torch.zeros(b, 4, width)
        tokens_next = torch.full((b, 4, width), 0.5)
        tokens_next[:, :, : width // 2] = 1.5  # pooled residual: 1.5 on the first half, 0.5 on the second
        out = head([torch.randn(b, 5, 16)], torch.randn(b, 8, 7), None, torch.ones(b, 5, dtype=torch.bool),
                   tokens, tokens_next, torch.ones(b), torch.ones(b, 8))
        return out["loss_geo"]

    expected = 0.5 * (0.5 * 1.5**2 + 0.5 * 0.5**2)  # uniform W: the mean of r^2, halved
    for width in (16, 256):
        torch.testing.assert_close(geo(width), torch.full((2,), expected))
    # all of W's weight on the first half: 0.5 * 1.5^2
    logits = torch.cat([torch.zeros(8), torch.full((8,), -1e4)])
    torch.testing.assert_close(geo(16, logits), torch.full((2,), 0.5 * 1.5**2))
