"""Cache of the frozen VLM's outputs for t+k frames, so the no-grad target pass can be skipped.

What is cached, and why exactly this: the t+k target tokens are `anchor(last VLM layer,
masks)`. The anchor trains, so its output (the task tokens) is never cached; the frozen
VLM's last hidden state and the visual / text masks of a frame are a pure function of
(the frame's images, its instruction, the VLM's weights, dtype, autocast and
preprocessing), so they are. An entry is one sample's unpadded rows:
  hidden (L_i, D) in the dtype the pass produced, visual (L_i,) bool, text (L_i,) bool
keyed by (dataset index, episode, frame, instruction). The t pass (which runs anyway)
fills the cache too: a frame seen at t is a hit when it is later needed as some t+k.

Model version: every use first computes the backbone's version, and a version other than
the stored one empties the cache. The version covers each parameter's storage, in-place
version counter (any `copy_`, `load_state_dict`, optimizer step bumps it), dtype, device
and shape, each buffer's storage and dtype (not its counter: DDP re-broadcasts buffers
at every forward), the preprocessing fingerprint (image processor settings, so image
size; tokenizer) and the autocast state. A backbone with any trainable parameter, or
with active dropout, has no version: the cache is then bypassed and emptied, so it is
never used while the VLM trains. Writes through `param.data` bypass the version counter:
call `clear()` after them.

Memory: bounded by `max_bytes` (`trainer.target_cache_mb`), least recently used entries
evicted first; entries live on the device of the hidden states (accelerator memory in
GPU runs). An entry costs about L * D * itemsize bytes (e.g. Qwen2.5-VL-3B, 2 cameras of
224 px, bf16: ~160 tokens * 2048 * 2 ~ 0.65 MB).

DDP and data workers: the cache lives in the training process of each rank, beside its
policy; data workers never see it. Ranks draw different samples, keys are global, and
frozen weights are identical on every rank, so no communication is needed. Under FSDP /
ZeRO-3 the frozen parameters' storages move between steps: the version changes and the
cache simply never hits (correct, no gain).

Legend: B batch, L VLM sequence, D VLM hidden size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Key = tuple[int, int, int, str]  # (dataset index, episode, frame, instruction)


@dataclass
class Entry:
    hidden: torch.Tensor  # (L_i, D) last VLM layer, padding removed
    visual: torch.Tensor  # (L_i,) bool
    text: torch.Tensor  # (L_i,) bool

    @property
    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in (self.hidden, self.visual, self.text))


def backbone_version(backbone: nn.Module) -> Hashable | None:
    """What must be equal for two passes of `backbone` to agree; None when it is not frozen."""
    signature = _signature(backbone)
    if signature is None or (backbone.training and _has_dropout(backbone)):
        return None
    return signature


def _signature(backbone: nn.Module) -> Hashable | None:
    params = []
    for p in backbone.parameters():
        if p.requires_grad:
            return None
        params.append((p.data_ptr(), p._version, p.dtype, p.device, p.shape))
    buffers = tuple((b.data_ptr(), b.dtype, b.device) for b in backbone.buffers())
    device = params[0][3].type if params else "cpu"
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) if device != "meta" else None
    fingerprint = backbone.preprocessing_fingerprint() if hasattr(backbone, "preprocessing_fingerprint") else ""
    return hash((tuple(params), buffers, autocast, fingerprint, backbone.training))


def _has_dropout(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            return True
        cfg = getattr(m, "config", None)
        if cfg is not None and any(float(getattr(cfg, name, 0.0) or 0.0) > 0
                                   for name in ("attention_dropout", "hidden_dropout", "dropout")):
            return True
    return False


class TargetCache:
    """LRU map (dataset, episode, frame, instruction) -> the frozen VLM's last hidden state of that frame."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"a target cache needs max_bytes > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._version: Hashable | None = None
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def usable(self, backbone: nn.Module) -> bool:
        """True when `backbone` is frozen; empties the cache when its version changed (or it trains)."""
        if self._version is not None and _signature(backbone) == self._version:  # the common case: no dropout scan
            return True
        version = backbone_version(backbone)
        if version != self._version:
            self.clear()
            self._version = version
        return version is not None

    def get(self, keys: Sequence[Key]) -> list[Entry | None]:
        out = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            out.append(entry)
        found = sum(e is not None for e in out)
        self.hits += found
        self.misses += len(out) - found
        return out

    def put(self, keys: Sequence[Key], hidden: torch.Tensor, lengths: Sequence[int], visual: torch.Tensor,
            text: torch.Tensor) -> None:
        """hidden (n, L, D), visual / text (n, L) bool, one row per key whose real tokens are
        [0, lengths[i]) (right padding); the padding is not stored."""
        for i, key in enumerate(keys):
            if key in self._entries:
                self._entries.move_to_end(key)
                continue
            n = int(lengths[i])
            # clones: a view would keep the whole batch tensor alive and break the byte budget
            entry = Entry(hidden[i, :n].detach().clone(), visual[i, :n].clone(), text[i, :n].clone())
            if entry.nbytes > self.max_bytes:
                continue
            self._entries[key] = entry
            self.nbytes += entry.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.nbytes -= old.nbytes
                self.evictions += 1


def pad_entries(entries: Sequence[Entry]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries -> hidden (n, L, D) zero-padded on the right, visual (n, L), text (n, L) False at padding."""
    from torch.nn.utils.rnn import pad_sequence

    return tuple(pad_sequence([getattr(e, f) for e in entries], batch_first=True) for f in ("hidden", "visual", "text"))
