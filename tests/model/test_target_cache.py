"""The t+k target path: last-layer-only pass, the frozen-VLM cache (equivalence, versioning, bounds), the plan."""

import dataclasses

import pytest
import torch

from sagrflow.model.target_cache import TargetCache, backbone_version, pad_entries
from sagrflow.model.targets import target_plan

from .conftest import B, build_policy, make_batch, seeded_forward

TERMS = ("loss_fm", "loss_dyn", "loss_geo", "loss_reg")


@pytest.fixture
def frozen(tiny_dir):
    """A policy whose VLM is frozen, with an attached cache."""
    policy = build_policy(tiny_dir)
    policy.backbone.requires_grad_(False)
    policy.target_cache = TargetCache(64 << 20)
    return policy


def vlm_rows(policy):
    """Rows of each VLM call made while the returned list is alive: (list, hook handle)."""
    rows = []
    hook = policy.backbone.register_forward_hook(
        lambda m, args, kw, o: rows.append(o.last_hidden_state.shape[0]), with_kwargs=True)
    return rows, hook


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_last_layer_only_pass_equals_hidden_states_last(tiny_dirs, arch):
    policy = build_policy(tiny_dirs[arch])
    batch = make_batch()
    with torch.no_grad():
        full = policy.backbone(batch.image_t, list(batch.lang))
        last = policy.backbone(batch.image_t, list(batch.lang), all_layers=False)
    assert last.hidden_states is None and full.hidden_states[-1] is full.last_hidden_state
    torch.testing.assert_close(last.last_hidden_state, full.last_hidden_state, atol=1e-6, rtol=1e-6)
    assert last.lengths == full.attention_mask.sum(1).tolist()


def test_cached_targets_equal_recomputed_and_skip_the_vlm(frozen, tiny_dir):
    plain = build_policy(tiny_dir)  # same seed: same weights, no cache
    plain.backbone.requires_grad_(False)
    batch = make_batch()  # samples 0 and 2 valid
    rows, hook = vlm_rows(frozen)
    try:
        first = seeded_forward(frozen, batch)  # fills the cache (t frames and t+k frames)
        second = seeded_forward(frozen, batch)  # every t+k frame is a hit
    finally:
        hook.remove()
    assert rows == [B, 2, B]  # the second forward ran no target pass
    assert first["target_cache_ratio"].item() == 0.0 and first["target_pass_ratio"].item() == pytest.approx(2 / 3)
    assert second["target_cache_ratio"].item() == pytest.approx(2 / 3) and second["target_pass_ratio"].item() == 0.0
    assert second["task_tokens_next_available"].item() == 1.0
    reference = seeded_forward(plain, batch)
    for k in TERMS:
        torch.testing.assert_close(first[k], reference[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second[k], reference[k], atol=1e-5, rtol=1e-4)


def test_t_frames_fill_the_cache_and_partial_hits_match(frozen, tiny_dir):
    plain = build_policy(tiny_dir)
    plain.backbone.requires_grad_(False)
    batch = make_batch(lang=["stack the cups", "open the drawer", "stack the cups"])
    seeded_forward(frozen, batch)
    # a later batch whose sample 0 has as t+k frame the t frame of the first batch's sample 1 (episode 1, frame 0)
    image_tk = batch.image_tk.clone()
    image_tk[0] = batch.image_t[1]
    later = dataclasses.replace(batch, image_tk=image_tk, episode_index=torch.tensor([1, 5, 6]),
                                frame_index=torch.tensor([-7, 0, 0]), lang=("open the drawer",) + batch.lang[1:],
                                valid_tk=torch.tensor([1.0, 0.0, 1.0]))
    rows, hook = vlm_rows(frozen)
    try:
        out = seeded_forward(frozen, later)
    finally:
        hook.remove()
    assert rows == [B, 1]  # sample 0 hit (seen as a t frame), sample 2 (episode 6) missed
    assert out["target_cache_ratio"].item() == pytest.approx(1 / 3)
    reference = seeded_forward(plain, later)
    for k in TERMS:
        torch.testing.assert_close(out[k], reference[k], atol=1e-5, rtol=1e-4)


def test_cache_is_never_used_while_the_vlm_trains(frozen):
    batch = make_batch()
    seeded_forward(frozen, batch)
    assert len(frozen.target_cache) > 0
    frozen.backbone.vlm.language_model.norm.weight.requires_grad_(True)  # one trainable VLM parameter
    rows, hook = vlm_rows(frozen)
    try:
        out = seeded_forward(frozen, batch)
    finally:
        hook.remove()
    assert rows == [B, 2] and out["target_cache_ratio"].item() == 0.0
    assert len(frozen.target_cache) == 0  # emptied, and not refilled
    assert backbone_version(frozen.backbone) is None


def test_version_changes_with_weights_dtype_and_preprocessing(frozen):
    bb = frozen.backbone
    v0 = backbone_version(bb)
    assert v0 is not None and backbone_version(bb) == v0
    with torch.no_grad():
        bb.load_state_dict(bb.state_dict())  # weights loaded (same values: still a new version)
    v1 = backbone_version(bb)
    assert v1 != v0
    bb.image_processor.size = {"shortest_edge": 784, "longest_edge": 112 * 112}  # another image size
    v2 = backbone_version(bb)
    assert v2 != v1
    bb.to(torch.float64)
    assert backbone_version(bb) not in (v0, v1, v2)
    cache = frozen.target_cache
    cache.usable(bb)
    cache.put([(0, 0, 0, "a")], torch.zeros(1, 3, 4, dtype=torch.float64), [3], torch.ones(1, 3, dtype=torch.bool),
              torch.zeros(1, 3, dtype=torch.bool))
    with torch.no_grad():
        next(bb.parameters()).add_(1.0)  # an in-place write: a new version empties the cache
    assert cache.usable(bb) and len(cache) == 0


def test_memory_is_bounded_least_recently_used_first():
    entry_bytes = 10 * 4 * 4 + 10 + 10  # hidden (10, 4) float32 + two (10,) bool masks
    cache = TargetCache(3 * entry_bytes)
    hidden = torch.randn(5, 12, 4)
    lengths = [10] * 5
    visual = torch.zeros(5, 12, dtype=torch.bool)
    visual[:, :4] = True
    text = ~visual
    keys = [(0, 0, f, "x") for f in range(5)]
    cache.put(keys[:3], hidden[:3], lengths[:3], visual[:3], text[:3])
    assert cache.nbytes == 3 * entry_bytes and len(cache) == 3
    cache.get([keys[0]])  # 0 is now the most recent
    cache.put(keys[3:], hidden[3:], lengths[3:], visual[3:], text[3:])
    assert cache.nbytes <= cache.max_bytes and len(cache) == 3 and cache.evictions == 2
    assert [e is not None for e in cache.get(keys)] == [True, False, False, True, True]
    # entries are copies without the padding: the batch tensor is not kept alive
    (e0,) = cache.get([keys[0]])
    assert e0.hidden.shape == (10, 4) and e0.hidden.untyped_storage().nbytes() == 10 * 4 * 4
    torch.testing.assert_close(e0.hidden, hidden[0, :10])
    padded, vis, txt = pad_entries([e0, cache.get([keys[4]])[0]])
    assert padded.shape == (2, 10, 4) and vis.dtype == torch.bool and torch.equal(vis[1], visual[4, :10])


def test_plan_reuses_in_range_links_and_names_frames():
    batch = make_batch(valid=[1.0, 0.0, 1.0])
    linked = dataclasses.replace(batch, tk_index=torch.tensor([2, 0, 7]), frame_index=torch.tensor([3, 4, 10]))
    plan = target_plan(linked, linked.valid_tk, list(linked.lang))
    # 0 reuses 2; 1 is invalid (its own row); 2's link is out of range -> target pass, table row B + 0
    assert plan.source == [2, 1, B] and plan.run == [2] and plan.reused == 1
    assert plan.keys_tk[0] == (0, 0, 10, linked.lang[0]) and plan.keys_t[2] == (0, 2, 10, linked.lang[2])
    assert target_plan(linked, linked.valid_tk, list(linked.lang), has_image_tk=False).keys_tk is None


def test_every_copy_of_a_frame_that_overlapping_chains_repeat_has_the_predecessor():
    """Two chains of one episode can overlap in a batch: frame 7 then comes twice, and collate's
    tk_index links frame 0 to one copy only. Both copies are frame 0's successor."""
    from sagrflow.core import batch as keys
    from sagrflow.data.collate import tk_index

    frames = [0, 7, 7]
    samples = [{keys.EPISODE_INDEX: 4, keys.FRAME_INDEX: f, keys.TEMPORAL_DELTA_K: 7, keys.VALID_TK: 1.0,
                keys.LANG: "stack"} for f in frames]
    links = tk_index(samples)
    assert links.tolist() == [2, -1, -1]  # one copy named
    batch = dataclasses.replace(make_batch(valid=[1.0, 1.0, 1.0], lang=["stack"] * 3), tk_index=links,
                                episode_index=torch.full((3,), 4), frame_index=torch.tensor(frames))
    plan = target_plan(batch, batch.valid_tk, list(batch.lang))
    assert plan.previous == [-1, 0, 0]
    assert plan.source == [2, B, B + 1] and plan.run == [1, 2]  # the targets are as before
