"""The temporal sample's field names and the typed batch that crosses into the model.

This is the one module that names the keys of DESIGN.md section 2. Data code emits
samples with these keys; `collate` (in `sagrflow.data.collate`) turns a list of them
into a `Batch`; the model only ever sees a `Batch`.

Legend: B batch, C cameras, H action horizon, A action dim, S state dim, L text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of import time: CLI and config code read the keys alone
    import torch

# --- sample keys (DESIGN.md section 2) -------------------------------------------------
IMAGE_T = "image_t"  # list[C] of uint8 (3, h, w) tensors at t
IMAGE_TK = "image_tk"  # same cameras at t+k (clamped to the episode's last frame)
IMAGE = "image"  # legacy key, identical to image_t
VALID_TK = "valid_tk"  # float 1.0 iff k in observation_indices and t+k < T
TEMPORAL_DELTA_K = "temporal_delta_k"  # int k
ACTION = "action"  # (H, A) float32, normalized; rows past the episode end repeat the last
ACTION_MASK = "action_mask"  # (H,) float32, 1 where t+i < T
LANG = "lang"  # instruction string
STATE_T = "state_t"  # (S,) float32, normalized; only with include_state
STATE_TK = "state_tk"
STATE = "state"  # legacy key, identical to state_t
# bookkeeping that lets tools and caches name a sample
DATASET_INDEX = "dataset_index"
EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"  # t

SAMPLE_KEYS = (IMAGE_T, IMAGE_TK, IMAGE, VALID_TK, TEMPORAL_DELTA_K, ACTION, ACTION_MASK, LANG)
STATE_KEYS = (STATE_T, STATE_TK, STATE)


@dataclass(frozen=True)
class Batch:
    """A collated batch of temporal samples. Every field is a tensor except `lang`.

    `lang` keeps the raw instructions for logging and for backbones whose processor
    must see text and images together; `lang_ids`/`lang_mask` hold them tokenized when
    collate was given a tokenizer.
    """

    image_t: torch.Tensor  # (B, C, 3, h, w) uint8
    image_tk: torch.Tensor | None  # (B, C, 3, h, w) uint8; None: a source without t+k frames (forward uses image_t)
    valid_tk: torch.Tensor  # (B,) float32
    action: torch.Tensor  # (B, H, A) float32
    action_mask: torch.Tensor  # (B, H) float32
    temporal_delta_k: torch.Tensor  # (B,) int64
    dataset_index: torch.Tensor  # (B,) int64
    episode_index: torch.Tensor  # (B,) int64
    frame_index: torch.Tensor  # (B,) int64
    lang: tuple[str, ...]
    state_t: torch.Tensor | None = None  # (B, S) float32
    state_tk: torch.Tensor | None = None  # (B, S) float32
    lang_ids: torch.Tensor | None = None  # (B, L) int64
    lang_mask: torch.Tensor | None = None  # (B, L) int64
    # tk_index[i] = j >= 0 when sample j's image_t is sample i's image_tk (same episode, frame
    # t_i + k, pair valid): its detached tokens can stand in for a second VLM pass. -1 otherwise.
    tk_index: torch.Tensor | None = None  # (B,) int64
    # per-camera depth or point maps for the geometric branch, when a source provides them
    depth_t: torch.Tensor | None = None  # (B, C, 1|3, h, w) float32
    depth_tk: torch.Tensor | None = None  # (B, C, 1|3, h, w) float32

    @property
    def batch_size(self) -> int:
        return self.action.shape[0]

    @property
    def image(self) -> torch.Tensor:
        """Legacy name for `image_t`."""
        return self.image_t

    @property
    def state(self) -> torch.Tensor | None:
        """Legacy name for `state_t`."""
        return self.state_t

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        import torch

        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device, non_blocking=non_blocking)
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Called by torch's DataLoader when `pin_memory=True`."""
        import torch

        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)
