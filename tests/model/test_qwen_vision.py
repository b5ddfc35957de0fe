"""The one-call vision attention equals transformers' one-call-per-piece loop, values and gradients."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch
import torch.nn.functional as F
import transformers

from sagrflow.model.backbone import VLMBackbone
from sagrflow.model.qwen_vision import PATCHED, llm_positions, segment_attention


def loop_reference(q, k, v, lengths, scale):
    """What transformers does without flash-attention: attention on each piece in turn."""
    out = [F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in piece), scale=scale)[0].transpose(0, 1)
           for piece in zip(*(x.split(lengths) for x in (q, k, v)), strict=True)]
    return torch.cat(out)


@pytest.mark.parametrize("lengths", [(16, 16, 16), (16, 8, 16, 4), (5,), (1, 7, 3)])
def test_segment_attention_matches_the_loop(lengths):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=g, requires_grad=True) for _ in range(3))
    got = segment_attention(q, k, v, lengths, scale=0.3)
    want = loop_reference(q, k, v, list(lengths), scale=0.3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    w = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _unpatch(backbone: VLMBackbone) -> int:
    n = 0
    for module in backbone.vlm.modules():
        if type(module).__name__ in PATCHED and "forward" in vars(module):
            del module.forward  # back to the class's per-piece loop
            n += 1
    return n


# 56 px: one window per image; 84 px: a 3x3 token grid in windows of 2x2, 2x1, 1x2, 1x1 (unequal pieces)
@pytest.mark.parametrize(("arch", "side"), [("qwen2_5_vl", 56), ("qwen2_5_vl", 84), ("qwen3_vl", 64)])
def test_backbone_tower_matches_transformers_loop(tiny_dirs, arch, side):
    torch.manual_seed(0)
    fast = VLMBackbone.from_pretrained(tiny_dirs[arch])
    torch.manual_seed(0)
    slow = VLMBackbone.from_pretrained(tiny_dirs[arch])
    assert _unpatch(slow) == fast.vlm.config.vision_config.depth  # every layer of the tower was batched
    images = torch.randint(0, 256, (3, 2, 3, side, side), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    lang = ["pick up the red cup", "open the drawer", "push the plate to the front"]
    outs = []
    for backbone in (fast, slow):
        out = backbone(images, lang)
        out.last_hidden_state.square().mean().backward()
        qkv = next(m for m in backbone.vlm.modules() if type(m).__name__ in PATCHED).qkv
        outs.append((out.last_hidden_state.detach(), qkv.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_host_built_positions_match_the_models_own(tiny_dirs, arch, monkeypatch):
    """The backbone builds the LLM's M-RoPE positions and the tower's positions and boundaries on the
    host; the model left alone builds them itself. Same hidden states, and the tower took ours."""
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, 2, 3, 56, 56), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    lang = ["pick up the red cup", "open the top drawer of the cabinet"]  # different lengths: right padding
    inputs = backbone.prepare_inputs(images, lang)
    inputs.pop("visual_pos")
    modeling = sys.modules[type(backbone.vlm).__module__]
    given = []
    real = modeling.get_vision_position_ids
    monkeypatch.setattr(modeling, "get_vision_position_ids",
                        lambda *a, kwargs=None, **kw: (given.append("position_ids" in kwargs), real(*a, kwargs=kwargs, **kw))[1])
    with torch.no_grad():
        own = backbone.vlm(**inputs, use_cache=False).last_hidden_state
        ours = backbone(images, lang, all_layers=False).last_hidden_state
    assert given == [False, True]  # the model computed its own, then took the host-built ones
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], own[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_llm_positions_run_once_per_row_layout_and_equal_the_models_own(tiny_dirs, arch, monkeypatch):
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    model = backbone.vlm
    images = torch.randint(0, 256, (4, 2, 3, 56, 56), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    lang = ["pick up the red cup", "open the top drawer of the cabinet", "pick up the red cup", "push it"]
    inputs = backbone.prepare_inputs(images, lang)
    own = model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                               attention_mask=inputs["attention_mask"])[0]
    calls = []
    real = type(model).get_rope_index
    monkeypatch.setattr(type(model), "get_rope_index", lambda self, *a, **k: (calls.append(a[0].shape[0]), real(self, *a, **k))[1])
    assert torch.equal(llm_positions(model, inputs), own)
    assert calls == [1, 1, 1]  # three layouts: rows 0 and 2 share one
    again = backbone.prepare_inputs(images[[3, 0]], [lang[3], lang[0]])
    want = real(model, again["input_ids"], again["mm_token_type_ids"], image_grid_thw=again["image_grid_thw"],
                attention_mask=again["attention_mask"])[0]
    assert torch.equal(llm_positions(model, again), want)
    assert calls == [1, 1, 1]  # known layouts: nothing built
    left = {k: v for k, v in inputs.items() if k != "visual_pos"}  # left padding: the model's own loop
    left["input_ids"], left["mm_token_type_ids"], left["attention_mask"] = (
        torch.stack([row.roll(int((m == 0).sum())) for row, m in zip(left[k], inputs["attention_mask"], strict=True)])
        for k in ("input_ids", "mm_token_type_ids", "attention_mask"))
    want = real(model, left["input_ids"], left["mm_token_type_ids"], image_grid_thw=left["image_grid_thw"],
                attention_mask=left["attention_mask"])[0]
    assert torch.equal(llm_positions(model, left), want)
    assert calls[-1] == 4


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_llm_positions_follow_each_rows_own_grids(tiny_dirs, arch):
    """Wide and tall images give the same token types but other M-RoPE positions; rows with different
    grids in one batch each read their own (a batch the backbone makes has one image size)."""
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    model = backbone.vlm
    side = 28 if arch == "qwen2_5_vl" else 32  # the merge unit: 2 x 4 and 4 x 2 merged tokens
    g = torch.Generator().manual_seed(5)
    parts = [backbone.prepare_inputs(torch.randint(0, 256, (1, 2, 3, h, w), generator=g, dtype=torch.uint8), [lang])
             for (h, w), lang in (((2 * side, 4 * side), "open it"), ((4 * side, 2 * side), "open it"))]
    length = max(p["input_ids"].shape[1] for p in parts)
    merged = {k: torch.cat([F.pad(p[k], (0, length - p[k].shape[1])) for p in parts])
              for k in ("input_ids", "mm_token_type_ids", "attention_mask")}
    merged["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in parts])
    assert not torch.equal(*merged["image_grid_thw"][[0, 2]])  # the rows' grids differ
    for inputs in ({k: v for k, v in parts[0].items() if k != "visual_pos"}, merged):
        want = model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                    image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])[0]
        assert torch.equal(llm_positions(model, inputs), want)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_prompt_ids_equal_the_tokenizers_batch_call(tiny_dirs, arch):
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    texts = [backbone._prompt([4, 4], lang) for lang in ("pick up the red cup", "open it", "pick up the red cup")]
    ids, mask = backbone._tokenize(texts)
    want = backbone.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=True)
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    assert ids.dtype == want["input_ids"].dtype and mask.dtype == want["attention_mask"].dtype


@pytest.mark.parametrize(("arch", "side"), [("qwen2_5_vl", 56), ("qwen3_vl", 64)])
def test_tower_inputs_are_built_once_per_set_of_grids(tiny_dirs, monkeypatch, arch, side):
    import sagrflow.model.qwen_vision as qv

    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, 2, 3, side, side), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    built = []
    real = qv._tower_positions
    monkeypatch.setattr(qv, "_tower_positions", lambda *a: (built.append(1), real(*a))[1])
    first = backbone(images, ["open it", "close it"], all_layers=False).last_hidden_state
    first.square().mean().backward()
    with torch.no_grad():
        second = backbone(images, ["open it", "close it"], all_layers=False).last_hidden_state
        backbone(images[:1], ["open it"], all_layers=False)  # other grids: built anew
    assert torch.equal(first.detach(), second)  # the remembered inputs survived a forward and backward
    assert len(built) == 2


def test_backbone_memos_copy_and_pickle(tiny_dirs):
    import copy
    import pickle

    from sagrflow.core.memo import Memo

    backbone = VLMBackbone.from_pretrained(tiny_dirs["qwen2_5_vl"])
    texts = [backbone._prompt([4, 4], "open it")]
    ids, _ = backbone._tokenize(texts)
    twin = copy.deepcopy(backbone)
    assert twin._prompt_ids is not backbone._prompt_ids
    assert torch.equal(twin._tokenize(texts)[0], ids)
    memo = Memo(2)
    for key in "abc":
        memo.get_or(key, lambda key=key: key * 2)
    assert len(memo) == 2 and memo.get_or("c", lambda: "new") == "cc"  # the oldest went, the latest stays
    again = pickle.loads(pickle.dumps(memo))
    assert len(again) == 0 and again.size == 2


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_tower_inputs_stay_on_the_device_between_calls(tiny_dirs, arch):
    """A remembered set of grids hands back the same device tensors (no copy per step), and their
    piece lengths are known without reading the device; another device gets its own."""
    from sagrflow.model.qwen_vision import _Lengths, host_position_inputs

    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, 2, 3, 56, 56), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    inputs = backbone.prepare_inputs(images, ["open it", "close it"])
    meta = torch.device("meta")  # a device whose tensors cannot be read back: each copy is a new object
    first, second = (host_position_inputs(backbone.vlm, inputs, meta) for _ in range(2))
    tower = [k for k in first if k.startswith("image_")]
    assert tower and all(first[k].is_meta and first[k] is second[k] for k in tower)
    assert sum(_Lengths.of(first["image_cu_seqlens"])) == first["image_position_ids"].shape[0]  # no read-back
    on_cpu = host_position_inputs(backbone.vlm, inputs, torch.device("cpu"))
    assert all(not on_cpu[k].is_meta for k in tower)


def test_a_model_moved_to_another_device_lets_go_of_the_old_devices_tower_inputs(tiny_dirs):
    """The tower's remembered inputs are device tensors (about 1 MB a set on a GPU): after the model
    moves, the old device's sets are dropped, not kept until 64 new ones push them out."""
    from sagrflow.model.qwen_vision import _MEMOS, host_position_inputs

    backbone = VLMBackbone.from_pretrained(tiny_dirs["qwen2_5_vl"])
    images = torch.randint(0, 256, (2, 2, 3, 56, 56), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    inputs = backbone.prepare_inputs(images, ["open it", "close it"])
    meta = host_position_inputs(backbone.vlm, inputs, torch.device("meta"))
    # the sequence boundaries are also held, a few at most, by the table of their host lengths
    held = [weakref.ref(v) for k, v in meta.items() if k.startswith("image_") and not k.endswith("seqlens")]
    del meta
    assert held and all(ref() is not None for ref in held)  # remembered while the model stays there
    host_position_inputs(backbone.vlm, inputs, torch.device("cpu"))
    gc.collect()
    assert all(ref() is None for ref in held)
    towers = [name for name in _MEMOS[backbone.vlm] if name.startswith("tower@")]
    assert towers == ["tower@cpu"] and len(_MEMOS[backbone.vlm]["tower@cpu"]) == 1


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_backbone_equals_the_models_own_call_with_its_mask(tiny_dirs, arch):
    """The backbone calls the LLM without an attention mask (right padding, causal attention) and, for
    Qwen2.5-VL, with the image features copied in by a host index instead of masked_scatter. Every
    layer's real tokens, and the gradients a loss on them gives every parameter, equal the model's
    own call on the processor-style inputs (input_ids, pixel_values, attention_mask), the input
    embeddings (hidden state 0, read by the observation summary) included."""
    torch.manual_seed(0)
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (3, 2, 3, 56, 56), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    lang = ["pick up the red cup", "go", "open the top drawer of the cabinet"]  # padded rows
    inputs = backbone.prepare_inputs(images, lang)
    inputs.pop("visual_pos")
    mask = inputs["attention_mask"].bool()
    weight = torch.randn(*mask.shape, backbone.hidden_size, generator=torch.Generator().manual_seed(4))
    results = []
    for call in (lambda: backbone.vlm(**inputs, output_hidden_states=True, use_cache=False).hidden_states,
                 lambda: backbone(images, lang).hidden_states):
        backbone.zero_grad(set_to_none=True)
        hidden = call()
        sum(((h * weight)[mask]).sum() for h in hidden).backward()  # [0]: the embeddings, images placed
        grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
        results.append(([h[mask].detach() for h in hidden], grads))
    (own, own_grads), (ours, our_grads) = results
    for a, b in zip(own, ours, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert own_grads.keys() == our_grads.keys() and len(own_grads) > 20
    for name, g in own_grads.items():
        torch.testing.assert_close(our_grads[name], g, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_tower_features_joined_as_older_transformers_hand_them_give_the_same_pass(tiny_dirs, arch, monkeypatch):
    """The tower's merged and deepstack features each joined into one (V, D) tensor (transformers up to
    5.17 hands Qwen3-VL's deepstack features back so) give the same pass as one piece per image."""
    torch.manual_seed(0)
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, 2, 3, 56, 56), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    lang = ["pick up the red cup", "go"]
    split = backbone(images, lang).hidden_states
    own = backbone.vlm.get_image_features
    joined, split_pieces = [], []

    def join(pieces):  # transformers 5.17 already joins Qwen3-VL's deepstack features: keep those
        if torch.is_tensor(pieces):
            return pieces
        split_pieces.append(len(pieces))
        return torch.cat(list(pieces))

    def joined_features(*args, **kwargs):
        out = own(*args, **kwargs)
        out.pooler_output = join(out.pooler_output)
        if getattr(out, "deepstack_features", None):
            out.deepstack_features = [join(pieces) for pieces in out.deepstack_features]
        joined.append(out.pooler_output.shape)
        return out

    monkeypatch.setattr(backbone.vlm, "get_image_features", joined_features)
    for a, b in zip(split, backbone(images, lang).hidden_states, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert len(joined) == 1 and joined[0][0] > 0
    if tuple(map(int, transformers.__version__.split(".")[:2])) >= (5, 18):  # the supported ones hand pieces: joined here
        assert split_pieces and all(n == 4 for n in split_pieces)  # 2 samples x 2 cameras


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_hooks_on_the_tower_the_language_model_and_its_layers_fire_once_per_call(tiny_dirs, arch):
    """What the README promises to users who hook the VLM's parts (the backbone does not call
    `backbone.vlm` itself for Qwen, so a hook there does not fire)."""
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    fired: dict[str, int] = {}
    parts = {"visual": backbone.vlm.visual, "language_model": backbone.vlm.language_model,
             "last layer": backbone.vlm.language_model.layers[-1]}
    for name, module in parts.items():
        module.register_forward_hook(lambda m, i, o, name=name: fired.__setitem__(name, fired.get(name, 0) + 1))
    images = torch.randint(0, 256, (2, 2, 3, 56, 56), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    backbone(images, ["pick up the red cup", "go"])
    assert fired == dict.fromkeys(parts, 1)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_backbone_keeps_its_patches_bound_to_its_own_modules(tiny_dirs, arch, how):
    """The batched tower attention and Qwen3-VL's deepstack-by-index survive deepcopy and a pickle
    round trip (torch.save of a whole policy, spawned workers), bound to the copy's modules, not the
    original's. (Pickled before any forward: transformers hooks Qwen3-VL's modules with local
    functions at its first forward, which pickle cannot name.)"""
    import copy
    import pickle

    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, 2, 3, 64, 64), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    lang = ["pick up the red cup", "go"]
    twin = copy.deepcopy(backbone) if how == "deepcopy" else pickle.loads(pickle.dumps(backbone))
    with torch.no_grad():
        want = backbone(images, lang).last_hidden_state
    patched = [m for m in twin.vlm.modules() if "forward" in vars(m) and type(m).__name__ in PATCHED]
    assert patched and all(m.forward.args[0] is m for m in patched)
    if arch == "qwen3_vl":
        assert twin.vlm.language_model._deepstack_process.args[0] is twin.vlm.language_model
    with torch.no_grad():
        torch.testing.assert_close(twin(images, lang).last_hidden_state, want, atol=0, rtol=0)


@pytest.mark.parametrize(("arch", "side"), [("qwen2_5_vl", 56), ("qwen3_vl", 64)])  # sizes the processor keeps
def test_qwen_pass_reads_nothing_back_from_the_device(tiny_dirs, arch, side):
    """On the meta device a tensor has no data, so any read-back (a count check, masked_scatter's
    backward, a mask test, boolean indexing) raises: the Qwen pass, forward and backward, runs
    without one, and so never makes the host wait for the GPU."""
    backbone = VLMBackbone.from_pretrained(tiny_dirs[arch]).to("meta")
    images = torch.zeros(2, 2, 3, side, side, dtype=torch.uint8, device="meta")
    out = backbone(images, ["pick up the red cup", "open the top drawer of the cabinet"])
    sum(h.float().sum() for h in out.hidden_states).backward()
    assert all(p.grad is not None for p in backbone.vlm.language_model.parameters())
