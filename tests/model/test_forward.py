"""The training forward: shapes, the no-graph target pass, exact masking, teacher/noisy, weights, determinism."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from sagrflow.model.config import COMPILE_WORLD_MODES
from sagrflow.model.dit import sample_time
from sagrflow.model.losses import masked_fm_loss, masked_mean, reduce_losses
from sagrflow.model.policy import COMPILE_WORLD

from .conftest import B, C, H, S, build_policy, make_batch, seeded_forward, small_config

TERMS = ("loss_fm", "loss_dyn", "loss_geo", "loss_reg")
DIAGNOSTICS = ("valid_tk_ratio", "has_image_tk", "task_tokens_next_available",
               "absmax/task_tokens", "absmax/pred_velocity", "absmax/drift")


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return build_policy(tiny_dir)


def grads(policy):
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def loss_and_grads(policy, batch, seed=123):
    policy.zero_grad(set_to_none=True)
    out = seeded_forward(policy, batch, seed)
    total, _ = reduce_losses(out, policy.config.action_model.loss_weights)
    total.backward()
    return out, total.detach(), grads(policy)


def test_forward_shapes_and_diagnostics(policy):
    out = seeded_forward(policy, make_batch())
    for k in TERMS:
        assert out[k].shape == (B,) and torch.isfinite(out[k]).all(), k
    for k in DIAGNOSTICS:
        assert out[k].shape == () and torch.isfinite(out[k]), k
    assert out["valid_tk_ratio"].item() == pytest.approx(2 / 3)
    assert out["has_image_tk"].item() == 1.0 and out["task_tokens_next_available"].item() == 1.0
    assert out["absmax/drift"] <= policy.config.action_model.drift_eta


def test_legacy_fallbacks_image_and_missing_image_tk(policy):
    batch = make_batch()
    no_tk = dataclasses.replace(batch, image_tk=None)
    out = seeded_forward(policy, no_tk)
    assert out["has_image_tk"].item() == 0.0 and all(out[k].shape == (B,) for k in TERMS)
    # image_tk missing == image_tk equal to image_t
    same = seeded_forward(policy, dataclasses.replace(batch, image_tk=batch.image_t))
    for k in TERMS:
        torch.testing.assert_close(out[k], same[k])
    # a legacy batch: `image` and `state` only, no valid_tk -> all pairs invalid
    legacy = SimpleNamespace(image=batch.image_t, state=batch.state_t, action=batch.action,
                             action_mask=batch.action_mask, lang=batch.lang)
    out = seeded_forward(policy, legacy)
    assert out["valid_tk_ratio"].item() == 0.0 and out["task_tokens_next_available"].item() == 0.0
    assert all(out[k].shape == (B,) for k in TERMS)


def test_state_required_when_state_dim_set(policy):
    with pytest.raises(ValueError, match="include_state"):
        policy(make_batch(state=False))


def test_target_pass_builds_no_graph(policy):
    grad_modes, outputs = [], []
    h1 = policy.backbone.register_forward_hook(lambda m, i, o: grad_modes.append(torch.is_grad_enabled()))
    h2 = policy.anchor.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        out = seeded_forward(policy, make_batch())
    finally:
        h1.remove()
        h2.remove()
    assert grad_modes == [True, False]  # image_t with gradients, image_tk without
    assert outputs[0].requires_grad and outputs[1].grad_fn is None and not outputs[1].requires_grad
    # and the world loss does reach the VLM through the t branch
    policy.zero_grad(set_to_none=True)
    masked_mean(out["loss_dyn"], out["valid_tk"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.backbone.parameters())


def test_invalid_pair_target_changes_no_loss_or_gradient(policy):
    batch = make_batch()  # sample 1 has valid_tk = 0
    changed_tk = batch.image_tk.clone()
    changed_tk[1] = 255 - changed_tk[1]
    other = dataclasses.replace(batch, image_tk=changed_tk)
    out_a, total_a, g_a = loss_and_grads(policy, batch)
    out_b, total_b, g_b = loss_and_grads(policy, other)
    for k in TERMS:
        assert torch.equal(out_a[k], out_b[k]), k
    assert torch.equal(total_a, total_b)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        assert torch.equal(g_a[n], g_b[n]), n
    # a valid sample's target does matter (the check above can fail)
    changed_tk[0] = 255 - changed_tk[0]
    out_c = seeded_forward(policy, dataclasses.replace(batch, image_tk=changed_tk))
    assert not torch.equal(out_a["loss_dyn"][0], out_c["loss_dyn"][0])


def test_all_invalid_batch_gives_zero_world_losses_not_nan(policy):
    out, total, g = loss_and_grads(policy, make_batch(valid=[0.0, 0.0, 0.0]))
    _, terms = reduce_losses(out, policy.config.action_model.loss_weights)
    for k in ("loss_dyn", "loss_geo", "loss_reg"):
        assert terms[k].item() == 0.0
    assert torch.isfinite(total) and terms["loss_fm"] > 0
    assert out["task_tokens_next_available"].item() == 0.0  # the target pass was skipped
    assert all(torch.isfinite(v).all() for v in g.values())


def test_masked_mean_ignores_nan_in_masked_samples():
    values = torch.tensor([1.0, float("nan"), 3.0], requires_grad=True)
    m = masked_mean(values, torch.tensor([1.0, 0.0, 1.0]))
    m.backward()
    assert m.item() == 2.0 and torch.isfinite(values.grad).all()
    assert masked_mean(values, torch.zeros(3)).item() == 0.0


def test_action_mask_applies_to_fm():
    v, target = torch.randn(2, H, 3), torch.randn(2, H, 3)
    mask = torch.ones(2, H)
    mask[0, 4:] = 0
    base = masked_fm_loss(v, target, mask)
    v2 = v.clone()
    v2[0, 4:] += 100.0
    torch.testing.assert_close(masked_fm_loss(v2, target, mask), base)
    assert base[0].item() == pytest.approx(((v[0, :4] - target[0, :4]) ** 2).mean().item(), rel=1e-6)


def test_teacher_and_noisy_feed_the_world_predictor_differently(tiny_dir):
    batch = make_batch()
    seen = {}
    for source in ("teacher", "noisy"):
        policy = build_policy(tiny_dir, world_action_source=source)
        hook = policy.head.world.register_forward_hook(lambda m, args, o, s=source: seen.update({s: (args, o)}))
        seeded_forward(policy, batch)
        hook.remove()
    r = 2
    teacher_actions = seen["teacher"][0][1]  # once per sample: its R repeats are identical rows
    noisy_actions = seen["noisy"][0][1]  # every repeat: each has its own noise and time
    assert torch.equal(teacher_actions, batch.action)
    assert noisy_actions.shape[0] == r * batch.action.shape[0]
    assert not torch.allclose(noisy_actions, teacher_actions.repeat_interleave(r, 0))
    assert seen["teacher"][0][3] is None and seen["noisy"][0][3] is not None  # only noisy sees the time
    assert not torch.allclose(seen["teacher"][1].repeat_interleave(r, 0), seen["noisy"][1])


def test_loss_weights_are_applied(policy):
    out = seeded_forward(policy, make_batch())
    w = {"fm": 1.0, "dyn": 0.2, "geo": 0.1, "reg": 1e-3}
    total, terms = reduce_losses(out, w)
    manual = sum(w[k] * terms[f"loss_{k}"] for k in w)
    torch.testing.assert_close(total, manual)
    only_fm, _ = reduce_losses(out, {"fm": 1.0, "dyn": 0.0, "geo": 0.0, "reg": 0.0})
    torch.testing.assert_close(only_fm, terms["loss_fm"])
    doubled, _ = reduce_losses(out, {"fm": 1.0, "dyn": 0.4, "geo": 0.1, "reg": 1e-3})
    torch.testing.assert_close(doubled - total, 0.2 * terms["loss_dyn"])
    with pytest.raises(ValueError, match="needs weights"):
        reduce_losses(out, {"fm": 1.0})


def test_same_seed_is_deterministic(tiny_dir):
    batch = make_batch()
    a = seeded_forward(build_policy(tiny_dir, seed=5), batch, seed=9)
    b = seeded_forward(build_policy(tiny_dir, seed=5), batch, seed=9)
    c = seeded_forward(build_policy(tiny_dir, seed=5), batch, seed=10)
    for k in TERMS:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["loss_fm"], c["loss_fm"])


def test_time_is_never_sampled_at_the_endpoints():
    t = sample_time(200_000, 1e-3)
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    assert t.min() > 0.0 and t.max() < 1.0


def test_time_leans_toward_the_noise_end():
    """Density 1.5 * sqrt(1 - t): P(t < 0.5) = 1 - 0.5 ** 1.5 = 0.646, mean 0.4 (the observation-driven end)."""
    t = sample_time(200_000, 1e-3)
    assert abs(float((t < 0.5).float().mean()) - (1 - 0.5**1.5)) < 0.01
    assert abs(float(t.mean()) - 0.4) < 0.01


def test_state_changes_the_velocity(policy):
    """Guards against the cross-attention-only DiT in which the state token never reaches the actions."""
    batch = make_batch()
    other = dataclasses.replace(batch, state_t=batch.state_t + 1.0)
    a = seeded_forward(policy, batch)
    b = seeded_forward(policy, other)
    assert (a["loss_fm"] - b["loss_fm"]).abs().max() > 1e-4


def test_few_optimizer_steps_drive_fm_down(tiny_dir):
    policy = build_policy(tiny_dir, seed=1, repeated_diffusion_steps=4)
    batch = make_batch()
    weights = policy.config.action_model.loss_weights

    def fm():
        with torch.no_grad():
            return seeded_forward(policy, batch, seed=0)["loss_fm"].mean().item()

    before = fm()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for step in range(30):
        opt.zero_grad()
        torch.manual_seed(step)
        total, _ = reduce_losses(policy(batch), weights)
        total.backward()
        opt.step()
    after = fm()
    assert after < 0.8 * before, (before, after)


def test_shapes_without_state_and_with_one_camera(tiny_dir):
    policy = build_policy(tiny_dir, state_dim=0)
    batch = make_batch(state=False)
    one_cam = dataclasses.replace(batch, image_t=batch.image_t[:, :1], image_tk=batch.image_tk[:, :1])
    out = seeded_forward(policy, one_cam)
    assert all(out[k].shape == (B,) for k in TERMS)
    assert policy.head.state_in is None and C == 2 and S == 5


def test_fm_only_baseline_skips_the_world_model(policy):
    grad_modes, anchor_calls = [], []
    hook = policy.backbone.register_forward_hook(lambda m, i, o: grad_modes.append(torch.is_grad_enabled()))
    hook2 = policy.anchor.register_forward_hook(lambda *a: anchor_calls.append(1))
    try:
        out = policy(make_batch(), fm_only=True)
    finally:
        hook.remove()
        hook2.remove()
    assert grad_modes == [True] and not anchor_calls  # no target pass, no task tokens
    assert out["task_tokens_next_available"].item() == 0.0 and out["absmax/drift"].item() == 0.0
    for k in ("loss_dyn", "loss_geo", "loss_reg"):
        assert torch.equal(out[k], torch.zeros(B)), k
    assert (out["loss_fm"] > 0).all()
    policy.zero_grad(set_to_none=True)
    reduce_losses(out, policy.config.action_model.loss_weights)[0].backward()
    no_grad = {n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None}
    world = {n for n, _ in policy.named_parameters() if n.startswith(policy.WORLD_MODULES)}
    assert no_grad == world and world


def test_target_pass_runs_only_valid_pairs_and_reuses_tk_index(policy):
    batch = make_batch(lang=["stack the cups", "open the drawer", "stack the cups"])
    image_tk = batch.image_tk.clone()
    image_tk[0] = batch.image_t[2]  # sample 0's t+k frame is sample 2's t frame (same episode)
    plain = dataclasses.replace(batch, image_tk=image_tk)
    linked = dataclasses.replace(plain, tk_index=torch.tensor([2, -1, -1]))
    rows = []
    hook = policy.backbone.register_forward_hook(lambda m, args, kw, o: rows.append(o.last_hidden_state.shape[0]),
                                                     with_kwargs=True)
    try:
        a = seeded_forward(policy, plain)
        b = seeded_forward(policy, linked)
    finally:
        hook.remove()
    assert rows == [B, 2, B, 1]  # the invalid sample 1 never enters the target pass; sample 0 reuses sample 2
    assert a["target_pass_ratio"].item() == pytest.approx(2 / 3) and a["target_reuse_ratio"].item() == 0.0
    assert b["target_pass_ratio"].item() == pytest.approx(1 / 3) and b["target_reuse_ratio"].item() == pytest.approx(1 / 3)
    for k in TERMS:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_fused_target_pass_equals_the_separate_one(tiny_dirs, arch):
    """target_pass: fused appends the t+k frames to the image_t call: one VLM call, same tokens,
    same losses, same gradients (the appended rows are detached)."""
    separate = build_policy(tiny_dirs[arch])
    fused = build_policy(tiny_dirs[arch], target_pass="fused")
    assert all(torch.equal(a, b) for a, b in zip(separate.state_dict().values(), fused.state_dict().values(),
                                                  strict=True))
    batch = make_batch(lang=["stack the cups", "open the drawer", "stack the cups"], valid=[1.0, 0.0, 1.0])
    # the direct check: the appended rows' tokens against a no-grad pass of their own
    run = [0, 2]
    _, appended = fused._encode_fused(batch.image_t, batch.image_tk, list(batch.lang), None, None, run)
    with torch.no_grad():
        o = separate.backbone(batch.image_tk[run], [batch.lang[i] for i in run], all_layers=False)
        alone = separate._anchor(o.last_hidden_state, o.visual_mask, o.text_mask, batch.image_tk[run], None)
    assert not appended.requires_grad
    torch.testing.assert_close(appended, alone, atol=1e-5, rtol=1e-4)
    calls = []
    hook = fused.backbone.register_forward_hook(lambda m, args, kw, o: calls.append(o.last_hidden_state.shape[0]),
                                                    with_kwargs=True)
    try:
        out_f, total_f, grads_f = loss_and_grads(fused, batch)
    finally:
        hook.remove()
    assert calls == [B + len(run)]  # one call: the B image_t rows and the 2 valid pairs' t+k frames
    out_s, total_s, grads_s = loss_and_grads(separate, batch)
    assert out_f["target_pass_ratio"].item() == pytest.approx(2 / 3) == out_s["target_pass_ratio"].item()
    for k in TERMS:
        torch.testing.assert_close(out_f[k], out_s[k], atol=1e-5, rtol=1e-4)
    assert grads_f.keys() == grads_s.keys()
    for name, g in grads_s.items():
        torch.testing.assert_close(grads_f[name], g, atol=1e-5, rtol=1e-3, msg=name)


def test_compiled_world_modules_equal_eager(tiny_dir):
    """framework.action_model.compile_world: the same losses and gradients, the same parameter names."""
    eager = build_policy(tiny_dir, target_pass="fused")
    compiled = build_policy(tiny_dir, target_pass="fused", compile_world=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable
    batch = make_batch(lang=["stack the cups", "open the drawer", "stack the cups"])
    out_c, _, grads_c = loss_and_grads(compiled, batch)
    out_e, _, grads_e = loss_and_grads(eager, batch)
    for k in TERMS:
        torch.testing.assert_close(out_c[k], out_e[k], atol=1e-5, rtol=1e-4)
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, atol=1e-5, rtol=1e-3, msg=name)
    with pytest.raises(ValueError, match=r"no module \['head'\]; the modules are \['anchor', 'world', 'drift'\]"):
        eager.compile_world(("world", "head"))
    assert eager.head.world._compiled_call_impl is None  # refused before compiling any
    with pytest.raises(ValueError, match=r"no module \['wrld'\]"):  # one name as a string, not its letters
        eager.compile_world("wrld")
    # eager(): the compiled policy's eager code, nothing compiled, the compiled call back afterwards
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    calls = [m._compiled_call_impl for m in compiled.compilable().values()]
    with compiled.eager():
        out_x, _, _ = loss_and_grads(compiled, batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    assert [m._compiled_call_impl for m in compiled.compilable().values()] == calls  # the same compiled calls
    for k in TERMS:
        torch.testing.assert_close(out_x[k], out_e[k], atol=1e-5, rtol=1e-4)
    assert {False, *COMPILE_WORLD} == set(COMPILE_WORLD_MODES)  # every value the config takes compiles something
    # "graphs": the two modules of fixed shapes alone (tests/train/test_world_graphs.py trains with it)
    graphed = build_policy(tiny_dir, target_pass="fused", compile_world="graphs")
    assert [m._compiled_call_impl is not None for m in (graphed.anchor, graphed.head.world, graphed.head.drift)] == [
        False, True, True]


def test_unpool_grads_copies_the_graphed_modules_gradients_and_nothing_else(tiny_dir):
    """Between micro-batches the trainer moves the CUDA-graphed modules' gradients to memory of their own
    (a later replay would overwrite the graph's): the same values, new storage, the rest untouched."""
    policy = build_policy(tiny_dir, target_pass="fused", compile_world="graphs")
    with policy.eager():  # where the gradients come from does not matter here
        loss_and_grads(policy, make_batch())
    before = {n: (p.grad.data_ptr(), p.grad.clone()) for n, p in policy.named_parameters() if p.grad is not None}
    policy.unpool_grads()
    moved = set()
    for name, p in policy.named_parameters():
        if name in before:
            torch.testing.assert_close(p.grad, before[name][1], rtol=0, atol=0, msg=name)
            if p.grad.data_ptr() != before[name][0]:
                moved.add(name)
    graphed = {n for n in before if n.startswith(("head.world.", "head.drift."))}
    assert moved == graphed and len(graphed) > 10
    eager = build_policy(tiny_dir, target_pass="fused")  # no graphs: nothing to move
    loss_and_grads(eager, make_batch())
    ptrs = [p.grad.data_ptr() for p in eager.parameters() if p.grad is not None]
    eager.unpool_grads()
    assert ptrs == [p.grad.data_ptr() for p in eager.parameters() if p.grad is not None]


def test_token_change_is_the_loss_dyn_of_predicting_no_change(tiny_dir):
    """token_change (B,) is each sample's mean of (task_tokens_next - task_tokens)^2 (over its R repeats,
    0 for an invalid pair): with a world predictor that outputs delta = 0 (pred_next = task_tokens),
    it equals loss_dyn sample by sample, and so after the same masked reduction."""
    policy = build_policy(tiny_dir)
    with torch.no_grad():
        policy.head.world.out.weight.zero_()
        policy.head.world.out.bias.zero_()
    for valid in ([1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]):
        out = seeded_forward(policy, make_batch(valid=valid))
        assert out["token_change"].shape == (B,)
        torch.testing.assert_close(out["token_change"], out["loss_dyn"].detach())
        assert ((out["token_change"] > 0) == (torch.tensor(valid) > 0)).all()
    assert torch.equal(policy(make_batch(), fm_only=True)["token_change"], torch.zeros(B))


@pytest.mark.parametrize("target_pass", ["separate", "fused"])
def test_training_step_reads_back_only_the_target_plan(tiny_dir, target_pass):
    """On the meta device any read of device data raises. Given its target plan, made from the
    batch while it was on the host (as the trainer does), the whole step, fm-only and SA-GR,
    forward and backward, runs there: nothing in it makes the host wait for the GPU."""
    policy = build_policy(tiny_dir, target_pass=target_pass)
    batch = make_batch()
    plan = policy.plan_targets(batch)
    policy, batch = policy.to("meta"), batch.to("meta")
    with pytest.raises(NotImplementedError):  # without the plan, the forward reads the batch back
        policy(batch)
    for fm_only in (True, False):
        policy.zero_grad(set_to_none=True)
        out = policy(batch, fm_only=fm_only, plan=plan)
        reduce_losses(out, policy.config.action_model.loss_weights)[0].backward()
        assert all(out[k].shape == (B,) for k in TERMS)
        assert any(p.grad is not None for p in policy.head.world.parameters()) != fm_only


def test_a_plan_made_on_the_host_gives_the_forwards_own_result(tiny_dir):
    policy = build_policy(tiny_dir, target_pass="separate")
    batch = make_batch()
    plan = policy.plan_targets(batch)
    assert plan.run == [0, 2] and plan.source == [3, 1, 4]  # samples 0 and 2 valid, no chains
    torch.manual_seed(5)
    given = policy(batch, plan=plan)
    own = seeded_forward(policy, batch, seed=5)
    for k in TERMS:
        torch.testing.assert_close(given[k], own[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="plan for 3 samples given with a batch of 2"):
        policy(make_batch(b=2), plan=plan)


def _chain(batch):
    """One chain 0 -> 1 -> 2: sample i's t+k frame is sample i+1's t frame (sample 2's pair runs the
    target pass). The middle sample is both a predecessor and a successor."""
    image_tk = batch.image_tk.clone()
    image_tk[0], image_tk[1] = batch.image_t[1], batch.image_t[2]
    return dataclasses.replace(batch, image_tk=image_tk, tk_index=torch.tensor([1, 2, -1]))


def _chain_batch():
    return _chain(make_batch(valid=[1.0, 1.0, 1.0], lang=["stack the cups"] * 3))


def test_previous_drift_residual_is_the_predecessors_detached(tiny_dir):
    """drift_residual "previous": sample i reads its predecessor i-1's residual (which the "same" drift
    reads for sample i-1), the chain's first sample gets drift exactly 0, and loss_fm no longer
    reaches the world predictor through the drift (the prediction is detached), only the current tokens."""
    batch = _chain_batch()
    seen = {}
    fm_only_weights = {"loss_w_dyn": 0.0, "loss_w_geo": 0.0, "loss_w_reg": 0.0, "drift_eta": 1.0}
    for mode in ("same", "previous"):
        policy = build_policy(tiny_dir, drift_residual=mode, **fm_only_weights)
        hook = policy.head.drift.register_forward_hook(
            lambda m, args, out, mode=mode: seen.update({mode: (args[0].detach(), out.detach())}))
        try:
            _, _, g = loss_and_grads(policy, batch)
        finally:
            hook.remove()
        world = [v.abs().max().item() for n, v in g.items() if n.startswith("head.world.")]
        anchor = [v.abs().max().item() for n, v in g.items() if n.startswith("anchor.")]
        assert world and anchor and max(anchor) > 0  # the anchor learns through the tokens the drift reads
        if mode == "same":  # the fm loss trains the world predictor through the drift
            assert max(world) > 0
        else:
            assert max(world) == 0
    r = 2  # repeated_diffusion_steps of the small config
    (same_in, _), (prev_in, prev_drift) = seen["same"], seen["previous"]
    torch.testing.assert_close(prev_in[r:], same_in[: 2 * r])  # samples 1, 2 hold samples 0, 1's residuals
    assert prev_in[:r].abs().max().item() == 0 and prev_drift[:r].abs().max().item() == 0
    assert prev_drift[r:].abs().max().item() > 0


def test_previous_drift_residual_is_what_predict_action_gives_the_drift(tiny_dir):
    """Training with "previous" and inference agree: a call k steps after the first gives the drift the
    residual that training gives the chain's second sample, when the first sample's actions are the
    chunk the first call generated (the world predictor reads executed actions in both)."""
    batch = _chain_batch()
    policy = build_policy(tiny_dir, drift_residual="previous", temporal_delta_k=7).eval()
    seen = []
    hook = policy.head.drift.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))

    def observation(i: int, **extra) -> dict:
        images = [batch.image_t[i, c].permute(1, 2, 0).numpy() for c in range(C)]
        return {"image": images, "lang": batch.lang[i], "state": batch.state_t[i].numpy(), "episode_id": "e", **extra}

    try:
        first = policy.predict_action([observation(0)], seed=0)
        policy.predict_action([observation(1, elapsed=7)], seed=0)
        inference = seen[-1][0]  # (K, W): the drift input of the second call, at any Euler step
        chunk = torch.as_tensor(first["actions_normalized"][0])
        executed = dataclasses.replace(batch, action=torch.stack([chunk, batch.action[1], batch.action[2]]))
        with torch.no_grad():
            policy(executed)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[-1][2], inference, atol=1e-5, rtol=1e-4)  # row 2 = sample 1's first repeat
    assert inference.abs().max().item() > 0


def test_previous_drift_residual_needs_teacher_actions_and_a_known_name(tiny_dir):
    with pytest.raises(ValueError, match="drift_residual='previous' needs world_action_source 'teacher'"):
        small_config(tiny_dir, drift_residual="previous", world_action_source="noisy")
    with pytest.raises(ValueError, match=r"drift_residual='last': use one of \('same', 'previous'\)"):
        small_config(tiny_dir, drift_residual="last")
