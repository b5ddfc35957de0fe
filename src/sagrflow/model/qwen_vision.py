"""Qwen VLMs without per-sample, per-image and per-window host round trips.

transformers' Qwen2.5-VL and Qwen3-VL models, without flash-attention, do two things whose
cost grows with the batch and is paid by the host, not the GPU:
  - they build the LLM's M-RoPE positions, and the tower's rotary positions, window indices
    and sequence boundaries, in Python loops over device tensors (`input_ids`, `grid_thw`),
    reading them back sample by sample and image by image;
  - their attention splits the patch sequence at `cu_seqlens` (images, or windows of an
    image) and calls attention once per piece, reading the lengths back in every layer.
A batch of 16 samples with two 224 px cameras makes hundreds of such calls per layer, and
the host sets the step time. Here:
  - `host_position_inputs` runs transformers' own code on the host copies of the inputs
    (the same functions, so the same tensors) and hands the results to the model as its
    `position_ids` and precomputed `image_*` keyword arguments. It runs that code once per
    distinct input, remembered per model, so most steps build nothing (benchmarks/host_inputs.py):
    the tower's positions per set of image grids (a fixed camera setup has one per row count;
    kept on the device, so they are not copied again), the LLM's per row layout (token types
    and grids; a dataset has a few prompt lengths);
  - `embedded_inputs` hands the LLM its input embeddings with the tower's outputs already in
    place, copied in at host-known token indices (and, with `index_deepstack`, Qwen3-VL's
    deepstack features added at those indices). transformers' own
    `masked_scatter` path checks the image-token count against the features (a read-back in
    forward) and its backward selects by mask (a read-back in backward); each makes the host
    wait for every kernel queued before it;
  - `batch_segments` gives each vision attention module a forward that sends all pieces
    through one `scaled_dot_product_attention`: a view when they share one length (a fixed
    image size), otherwise padded to the longest with the padding keys masked. Queries
    still attend only within their own piece, so the outputs are the same up to
    floating-point summation order.

Legend: S patches of all images, P pieces, M longest piece, nh heads, hd head size.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import nn

from sagrflow.core.device import to_device
from sagrflow.core.memo import Memo

PATCHED = ("Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention")


class _Lengths:
    """Host piece lengths of the `cu_seqlens` tensors a tower pass uses (two per pass at most).

    `host_position_inputs` registers them when it builds the tensors, so no layer reads the device;
    a tensor it did not build is read back once and remembered. Strong references keep the
    identities unambiguous; the table holds the latest few."""

    table: OrderedDict[int, tuple[torch.Tensor, tuple[int, ...]]] = OrderedDict()

    @classmethod
    def remember(cls, cu_seqlens: torch.Tensor, lengths: tuple[int, ...]) -> None:
        cls.table[id(cu_seqlens)] = (cu_seqlens, lengths)
        while len(cls.table) > 8:
            cls.table.popitem(last=False)

    @classmethod
    def of(cls, cu_seqlens: torch.Tensor) -> tuple[int, ...]:
        hit = cls.table.get(id(cu_seqlens))
        if hit is not None and hit[0] is cu_seqlens:
            return hit[1]
        lengths = tuple(cu_seqlens.diff().tolist())
        cls.remember(cu_seqlens, lengths)
        return lengths


_MEMOS: weakref.WeakKeyDictionary[nn.Module, dict[str, Memo]] = weakref.WeakKeyDictionary()


_MEMOS_LOCK = threading.Lock()


def _memo(model: nn.Module, name: str, size: int, device: torch.device | None = None) -> Memo:
    """`model`'s memo `name` (dropped with the model). With a `device`, the memo of device tensors for
    that device: a model moved to another device drops the old device's memo, and its memory with it."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one memo
            device = torch.device("cuda", torch.cuda.current_device())
    with _MEMOS_LOCK:
        memos = _MEMOS.setdefault(model, {})
        if device is not None:
            own = f"{name}@{device}"
            for key in [k for k in memos if k.startswith(f"{name}@") and k != own]:
                del memos[key]
            name = own
        return memos.setdefault(name, Memo(size))


def host_position_inputs(model: nn.Module, inputs: dict[str, torch.Tensor],
                         device: torch.device) -> dict[str, torch.Tensor]:
    """A Qwen VLM and its host keyword inputs (input_ids, mm_token_type_ids, attention_mask (B, L),
    image_grid_thw (N, 3)) -> on `device`: the LLM's `position_ids` (3, B, L) and the tower's
    precomputed `image_*` inputs (rotary positions, sequence boundaries, and window order or
    position interpolation)."""
    grid_thw = inputs["image_grid_thw"]
    grids = tuple(map(tuple, grid_thw.tolist()))
    # kept on `device`, so a remembered set costs no copy; keyed by the batch's grids, so each row count
    # takes an entry (SA-GR's fused rows and target passes vary it): room for 64, about 1 MB each at
    # 256 images of 224 px
    moved, lengths = _memo(model, "tower", 64, device).get_or(grids, lambda: _tower_on(model.visual, grid_thw, device))
    for key, pieces in lengths.items():
        _Lengths.remember(moved[key], pieces)
    return {"position_ids": to_device(llm_positions(model, inputs), device),
            **{f"image_{k}": v for k, v in moved.items()}}


def embedded_inputs(model: nn.Module, inputs: dict[str, torch.Tensor], grid_thw: torch.Tensor,
                    visual: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """A Qwen VLM, its device keyword inputs (input_ids (B, L), pixel_values, position_ids and the tower's
    `image_*` inputs from `host_position_inputs`), the host grids (N, 3) and the host mask of the image
    tokens (B, L) -> its language model's keyword inputs: "inputs_embeds" (B, L, D), the token
    embeddings with the tower's merged outputs copied in at the image tokens, in prompt order, as
    transformers' `masked_scatter` places them, and "position_ids"; for Qwen3-VL also
    "deepstack_visual_embeds" (the tower's early-layer features that early LLM layers add at the image
    tokens) and "visual_pos_masks", here the flat positions (V,) of the image tokens (`index_deepstack`).
    The positions are found on the host, so nothing is read back from the device in forward or backward
    (the gradient of a copy or add by index is a gather by the same index)."""
    embeds = model.get_input_embeddings()(inputs["input_ids"])  # (B, L, D)
    tower = {k: v for k, v in inputs.items() if k.startswith("image_") and k != "image_grid_thw"}
    # host grids: the features are split on the host, not after a read-back of the device copy
    out = model.get_image_features(inputs["pixel_values"], grid_thw, return_dict=True, **tower)
    features = _joined(out.pooler_output).to(embeds.dtype)  # (V, D) all images' tokens, in order
    where = visual.flatten().nonzero().squeeze(1)  # (V,) flat positions of the image tokens, on the host
    if where.numel() != features.shape[0]:
        raise ValueError(f"{where.numel()} image tokens in the prompts but the tower made {features.shape[0]} features")
    b, length, d = embeds.shape
    where = to_device(where, embeds.device)
    result = {"inputs_embeds": embeds.reshape(b * length, d).index_copy(0, where, features).view(b, length, d),
              "position_ids": inputs["position_ids"]}
    deepstack = getattr(out, "deepstack_features", None)
    if deepstack:
        result["visual_pos_masks"] = where
        result["deepstack_visual_embeds"] = [_joined(pieces) for pieces in deepstack]  # each (V, D)
    return result


def _joined(features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The tower's features of all images (V, D), from one piece per image ((V_i, D) each) or already
    joined: transformers up to 5.17 hands Qwen3-VL's deepstack features back joined, later ones split."""
    return features if isinstance(features, torch.Tensor) else torch.cat(list(features))


def _deepstack_by_index(self, hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                        visual_embeds: torch.Tensor) -> torch.Tensor:
    """hidden_states (B, L, D) plus visual_embeds (V, D) at the image tokens, named by the flat positions
    (V,) that `embedded_inputs` passes, or by the (B, L) mask of the model's own call."""
    if visual_pos_masks.dtype == torch.bool:
        return type(self)._deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds)
    b, length, d = hidden_states.shape
    embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    return hidden_states.reshape(b * length, d).index_add(0, visual_pos_masks, embeds).view(b, length, d)


def index_deepstack(model: nn.Module) -> bool:
    """Qwen3-VL: its language model's deepstack step also takes flat positions of the image tokens
    where it takes a mask (whose boolean indexing reads the device back), an add by index. -> whether
    the model has such a step."""
    language_model = getattr(model, "language_model", None)
    if language_model is None or not hasattr(language_model, "_deepstack_process"):
        return False
    # a partial of a module-level function, not a bound method: it survives pickling (torch.save of a
    # whole policy, spawned workers) as well as deepcopy, bound to the copy's own module
    language_model._deepstack_process = partial(_deepstack_by_index, language_model)
    return True


def _tower_on(visual: nn.Module, grid_thw: torch.Tensor, device: torch.device
              ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """(N, 3) image grids -> the tower's inputs on `device`, and the host piece lengths of its boundaries."""
    out = _tower_positions(visual, grid_thw)
    lengths = {k: tuple(out[k].diff().tolist()) for k in ("cu_seqlens", "cu_window_seqlens") if k in out}
    return {k: to_device(v, device) for k, v in out.items()}, lengths


def _tower_positions(visual: nn.Module, grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 3) image grids -> the tower's host inputs, by transformers' own functions."""
    from transformers import vision_utils as vu

    merge = visual.spatial_merge_size
    out = {"position_ids": vu.get_vision_position_ids(grid_thw, merge), "cu_seqlens": vu.get_vision_cu_seqlens(grid_thw)}
    if hasattr(visual, "window_size"):  # Qwen2.5-VL: windowed layers
        out["window_index"], out["cu_window_seqlens"] = vu.get_vision_window_index(
            grid_thw, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size)
    if hasattr(visual, "num_grid_per_side"):  # Qwen3-VL: interpolated absolute position embeddings
        out["interp_indices"], out["interp_weights"] = vu.get_vision_interpolation_indices_and_weights(
            grid_thw, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
    return out


def llm_positions(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LLM's M-RoPE positions (3, B, L) from host keyword inputs, by the model's own `get_rope_index`.

    A row's positions depend on its token types (text or image) and its images' grids alone, so
    `get_rope_index` runs once per such layout and the rows are copied in; padding reads 0, as there.
    Left padding or video tokens take the model's own loop over the whole batch."""
    ids, types, grids = inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
    mask = inputs["attention_mask"].bool()
    b, length = types.shape
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(length) < lengths[:, None]) or bool((types == 2).any()):
        return model.get_rope_index(ids, types, image_grid_thw=grids, attention_mask=inputs["attention_mask"])[0]
    image = types == 1
    starts = image & torch.cat([torch.ones(b, 1, dtype=torch.bool), ~image[:, :-1]], dim=1)  # (B, L)
    images = starts.sum(1).tolist()  # images per row, in grid order
    grid_rows = [tuple(g) for g in grids.tolist()]
    memo = _memo(model, "rows", 1024)

    def row_positions(i: int, n: int, first: int, count: int) -> torch.Tensor:  # -> (3, n)
        return model.get_rope_index(ids[i:i + 1, :n], types[i:i + 1, :n], image_grid_thw=grids[first:first + count])[0][:, 0]

    out = torch.zeros(3, b, length, dtype=ids.dtype)
    first = 0
    for i, (n, count) in enumerate(zip(lengths.tolist(), images, strict=True)):
        key = (types[i, :n].numpy().tobytes(), tuple(grid_rows[first:first + count]))
        out[:, i, :n] = memo.get_or(key, partial(row_positions, i, n, first, count))
        first += count
    return out


@lru_cache(maxsize=16)
def _layout(lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> gather index (P, M) into S (0 at padding), key keep-mask (P, 1, 1, M), flat positions of the
    S real rows in the padded (P*M) layout."""
    n = torch.tensor(lengths)
    starts = torch.cumsum(n, 0) - n
    col = torch.arange(max(lengths))
    keep = col[None] < n[:, None]  # (P, M)
    index = torch.where(keep, starts[:, None] + col[None], 0)
    real = keep.flatten().nonzero().squeeze(1)  # (S,)
    return to_device(index, device), to_device(keep[:, None, None], device), to_device(real, device)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...],
                      scale: float) -> torch.Tensor:
    """q, k, v (S, nh, hd), piece lengths summing to S -> (S, nh, hd), each piece attending to itself."""
    s, nh, hd = q.shape
    if len(set(lengths)) == 1:  # one length: the pieces are a batch already
        p, m = len(lengths), lengths[0]
        q, k, v = (x.view(p, m, nh, hd).transpose(1, 2) for x in (q, k, v))  # (P, nh, M, hd)
        y = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return y.transpose(1, 2).reshape(s, nh, hd)
    index, keep, real = _layout(lengths, q.device)
    q, k, v = (x[index].transpose(1, 2) for x in (q, k, v))  # (P, nh, M, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)  # padded queries: discarded
    return y.transpose(1, 2).reshape(-1, nh, hd)[real]  # (S, nh, hd)


def _forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
             position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **_) -> torch.Tensor:
    """(S, dim) patches -> (S, dim); the signature and result of the module's own forward."""
    s = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(s, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
    y = segment_attention(q, k, v, _Lengths.of(cu_seqlens), self.scaling)
    return self.proj(y.reshape(s, -1))


def batch_segments(model: nn.Module) -> int:
    """Give every Qwen vision attention module of `model` the one-call forward, unless the model
    runs flash-attention (which takes the lengths natively). -> how many modules were changed."""
    changed = 0
    for module in model.modules():
        if type(module).__name__ in PATCHED and "flash" not in str(module.config._attn_implementation):
            module.forward = partial(_forward, module)  # picklable, as in index_deepstack
            changed += 1
    return changed
