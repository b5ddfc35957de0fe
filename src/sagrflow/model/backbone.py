"""Backbone adapter over transformers VLMs, and the choice of layers that feed the DiT.

One code path for every checkpoint, tiny or real: the model's own tokenizer and image
processor (PIL backend, no torchvision) build the inputs, the base VLM (no LM head, so no
logits are ever computed) runs with `output_hidden_states`, and the adapter returns every
layer's hidden states with the attention mask and the positions of the visual tokens. A
caller that reads only the last layer (the t+k target pass: the anchor reads nothing else)
asks for `all_layers=False`: no per-layer capture hooks, no per-layer tensors kept.

Prompts are built here rather than by the architecture's combined `Processor`: in
transformers 5 the Qwen processors require a video processor, which needs torchvision.
The placeholder expansion below is the one those processors perform. The prompts are
right-padded and the LLM runs without an attention mask, so a real token's output is the
same as under the model's own masked call (tests/model/test_qwen_vision.py).

Legend: B batch, C cameras, N = B*C images, L sequence, D VLM hidden size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch
from torch import nn

from sagrflow.core.device import to_device
from sagrflow.core.memo import Memo
from sagrflow.model.pixels import qwen_pixels
from sagrflow.model.qwen_vision import batch_segments, embedded_inputs, host_position_inputs, index_deepstack

ARCHS = ("qwen2_5_vl", "qwen3_vl", "llava")
TINY_PREFIX = "tiny:"


@dataclass
class BackboneOutput:
    # num_layers + 1 of (B, L, D); [0] is the embedding output. None when only the last was asked for
    hidden_states: tuple[torch.Tensor, ...] | None
    last_hidden_state: torch.Tensor  # (B, L, D) after the final norm; is hidden_states[-1]
    attention_mask: torch.Tensor  # (B, L) bool, False at padding
    visual_mask: torch.Tensor  # (B, L) bool, True at image tokens
    text_mask: torch.Tensor  # (B, L) bool, True at non-padding, non-image tokens
    lengths: list[int]  # B real (non-padding) token counts, read on the host before the inputs moved
    # (B, L, 3) camera index, row and column centre in [0, 1] of each visual token; 0 elsewhere
    visual_pos: torch.Tensor | None = None
    cameras: int = 1  # C, images per sample

    @property
    def layers(self) -> tuple[torch.Tensor, ...]:
        """The decoder layers' outputs, (B, L, D) each, in depth order."""
        assert self.hidden_states is not None, "this pass ran with all_layers=False"
        return self.hidden_states[1:]


def select_layers(spec: str | Sequence[int], depth: int, num_layers: int) -> list[int]:
    """Indices of the VLM layers feeding DiT blocks 0..depth-1 (0 = first decoder layer).

    `spec` is "first" (layers 0..depth-1), "last" (the last `depth`) or an explicit list
    (negative indices count from the end) whose length must equal `depth`.
    """
    if isinstance(spec, str):
        if depth > num_layers:
            raise ValueError(
                f"the DiT has {depth} blocks but the VLM has only {num_layers} layers to feed them: set "
                f"framework.action_model.dit_depth <= {num_layers}"
            )
        return list(range(depth)) if spec == "first" else list(range(num_layers - depth, num_layers))
    layers = list(spec)
    if len(layers) != depth:
        raise ValueError(
            f"framework.backbone.layers lists {len(layers)} VLM layers but the DiT has {depth} blocks "
            f"(framework.action_model.dit_depth); give one layer per block"
        )
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"framework.backbone.layers {bad} out of range: the VLM has {num_layers} layers")
    return [i % num_layers for i in layers]


def resolve_path(path: str) -> Path:
    """A checkpoint directory; `tiny:<arch>` builds (once) and returns the offline tiny one."""
    if path.startswith(TINY_PREFIX):
        from sagrflow.model.tiny import cached_tiny

        return cached_tiny(path[len(TINY_PREFIX):])
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ValueError(f"backbone path {path!r} is not a model directory (no config.json)")
    model_type = json.loads((p / "config.json").read_text()).get("model_type")
    if model_type not in ARCHS:  # before loading gigabytes of weights
        raise ValueError(f"{p}: unsupported VLM architecture {model_type!r}; supported: {ARCHS}")
    return p


class VLMBackbone(nn.Module):
    """A transformers VLM (base model, no LM head) with its tokenizer and image processor."""

    def __init__(self, model: nn.Module, tokenizer, image_processor, source_dir: Path):
        super().__init__()
        self.vlm = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source_dir = source_dir
        cfg = model.config
        self.arch = cfg.model_type
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported VLM architecture {self.arch!r}; supported: {ARCHS}")
        self.hidden_size = int(cfg.text_config.hidden_size)
        self.num_layers = int(cfg.text_config.num_hidden_layers)
        self.image_token_id = int(cfg.image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        if self.arch == "llava":
            _freeze_unused_vision_layers(model)
        batch_segments(model)  # Qwen vision towers: one attention call per layer, not one per piece
        index_deepstack(model)  # Qwen3-VL: deepstack features added by index (embedded_inputs)
        # right padding: real tokens never see a pad (causal attention), so padding is inert
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # token ids of each distinct prompt: a dataset holds few instructions, and the tokenizer's batch
        # call costs about 0.1 ms of host time per row
        self._prompt_ids = Memo(4096)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> VLMBackbone:
        """Load weights, tokenizer and image processor from a local directory."""
        from transformers import AutoModelForImageTextToText

        src = resolve_path(str(path))
        full = AutoModelForImageTextToText.from_pretrained(src, dtype=dtype, local_files_only=True)
        return cls(full.model, *_load_preprocessors(src), source_dir=src)

    @classmethod
    def from_config_dir(cls, path: str | Path) -> VLMBackbone:
        """Architecture only: parameters on the meta device, to be filled by a strict load."""
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForImageTextToText

        src = Path(path)
        config = AutoConfig.from_pretrained(src, local_files_only=True)
        with init_empty_weights(include_buffers=False):
            full = AutoModelForImageTextToText.from_config(config)
        return cls(full.model, *_load_preprocessors(src), source_dir=src)

    def save_preprocessors(self, out_dir: str | Path) -> None:
        """Config, tokenizer and image processor (no weights: those live in the policy's file)."""
        out = Path(out_dir)
        self.vlm.config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)

    # --- inputs --------------------------------------------------------------------------
    def _prompt(self, n_tokens: Sequence[int], lang: str) -> str:
        img = self.image_token
        if self.arch == "llava":
            return "USER: " + "".join(img * n for n in n_tokens) + "\n" + lang + " ASSISTANT:"
        vision = "".join(f"<|vision_start|>{img * n}<|vision_end|>" for n in n_tokens)
        return f"<|im_start|>user\n{vision}{lang}<|im_end|>\n"

    def _token_grids(self, pixels: dict) -> list[tuple[int, int, int]]:
        """(rows, columns, leading extra tokens) of each image's visual tokens, row-major."""
        if self.arch == "llava":
            cfg = self.vlm.config
            h, w = pixels["pixel_values"].shape[-2:]
            patch = cfg.vision_config.patch_size
            extra = 1 if cfg.vision_feature_select_strategy == "full" else 0  # the CLS token comes first
            return [(h // patch, w // patch, extra)] * pixels["pixel_values"].shape[0]
        merge = self.image_processor.merge_size
        return [(int(h) // merge, int(w) // merge, 0) for _, h, w in pixels["image_grid_thw"].tolist()]

    def prepare_inputs(self, images: torch.Tensor, lang: Sequence[str]) -> dict[str, torch.Tensor]:
        """(B, C, 3, h, w) uint8 + B instructions -> the VLM's keyword inputs (host tensors, except
        Qwen pixel values made by `pixels.qwen_pixels`, which stay on the images' device), and
        "visual_pos" (B*V, 3): (camera, row, column) of the V visual tokens of each sample, which
        `forward` takes out before the call."""
        b, c = images.shape[:2]
        if len(lang) != b:
            raise ValueError(f"{len(lang)} instructions for a batch of {b}")
        flat = images.reshape(b * c, *images.shape[2:])  # (N, 3, h, w)
        pixels = None if self.arch == "llava" else qwen_pixels(flat, self.image_processor)
        if pixels is None:  # a size the processor resizes, or LLaVA: the transformers processor, on the host
            pixels = dict(self.image_processor(images=list(flat.cpu()), return_tensors="pt"))
        grids = self._token_grids(pixels)
        per_image = [r * c + e for r, c, e in grids]
        texts = [self._prompt(per_image[i * c:(i + 1) * c], text) for i, text in enumerate(lang)]
        input_ids, attention_mask = self._tokenize(texts)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **pixels}
        if self.arch != "llava":
            inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        inputs["visual_pos"] = _visual_positions(tuple(grids), c)
        return inputs

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> input_ids and attention_mask (B, L), right-padded, as `tokenizer(texts, padding=True)`
        returns them (a row's ids do not depend on the other rows)."""
        rows = [self._prompt_ids.get_or(text, partial(self._encode_prompt, text)) for text in texts]
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(row) for row in rows])
        return ids, (torch.arange(ids.shape[1]) < lengths[:, None]).long()

    def _encode_prompt(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)

    # --- forward -------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, lang: Sequence[str], all_layers: bool = True) -> BackboneOutput:
        """(B, C, 3, h, w) uint8 images and B instructions -> hidden states of every layer
        (`all_layers=False`: of the last one only, the same values)."""
        device = next(self.vlm.parameters()).device
        cpu_inputs = self.prepare_inputs(images, lang)
        positions = cpu_inputs.pop("visual_pos")  # (B*V, 3): not a VLM input
        lengths = cpu_inputs["attention_mask"].sum(1).tolist()
        # the masks and token positions are made on the host too; every copy is non-blocking, since a
        # blocking host-to-device copy waits for all the GPU work queued before it
        attention = cpu_inputs["attention_mask"].bool()  # (B, L)
        visual = (cpu_inputs["input_ids"] == self.image_token_id) & attention
        visual_pos = torch.zeros(*visual.shape, 3)
        visual_pos[visual] = positions
        inputs = self.call_inputs(cpu_inputs, visual, device)
        # embedded inputs go to the language model itself: the outer model would place the images again
        model = self.vlm.language_model if "inputs_embeds" in inputs else self.vlm
        out = model(**inputs, output_hidden_states=all_layers, use_cache=False, return_dict=True)
        attention, visual = (to_device(m, device) for m in (attention, visual))
        return BackboneOutput(
            hidden_states=tuple(out.hidden_states) if all_layers else None,
            last_hidden_state=out.last_hidden_state, attention_mask=attention, visual_mask=visual,
            text_mask=attention & ~visual, lengths=lengths, visual_pos=to_device(visual_pos, device),
            cameras=images.shape[1],
        )

    def call_inputs(self, cpu_inputs: dict[str, torch.Tensor], visual: torch.Tensor,
                    device: torch.device) -> dict[str, torch.Tensor]:
        """`prepare_inputs`' host tensors and the host mask of the image tokens (B, L) -> the VLM's keyword
        inputs on `device`, with nothing the model would read back from the device:
          - no attention mask: the prompts are right-padded, so under causal attention no real token sees
            a pad (transformers read a given mask back to decide whether they may skip it). A pad's own
            output is finite and read by nothing;
          - Qwen: the LLM's and the tower's positions built on the host (`host_position_inputs`);
          - Qwen: the image features placed in the input embeddings (and Qwen3-VL's deepstack features
            added) by a host index (`embedded_inputs`), not by masked_scatter and boolean indexing; these
            go to the language model itself."""
        inputs = {k: to_device(v, device) for k, v in cpu_inputs.items() if k != "attention_mask"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.vlm.dtype)
        if self.arch == "llava":
            return inputs
        inputs.update(host_position_inputs(self.vlm, cpu_inputs, device))
        return embedded_inputs(self.vlm, inputs, cpu_inputs["image_grid_thw"], visual)

    def preprocessing_fingerprint(self) -> str:
        """What, besides the weights, decides the hidden states of an (images, instruction) input:
        the architecture, the image processor's settings (image size, normalization), the tokenizer."""
        tok = self.tokenizer
        settings = sorted(vars(self.image_processor).items())  # repr: ~10 us, where to_json_string takes ~80
        return repr((self.arch, type(self.image_processor).__name__, settings, type(tok).__name__, len(tok),
                     tok.padding_side, self.image_token_id))


@lru_cache(maxsize=64)  # keyed by the batch's grids: one entry per row count
def _visual_positions(grids: tuple[tuple[int, int, int], ...], cameras: int) -> torch.Tensor:
    """Per-image token grids (B*C of (rows, columns, extra)) -> (B*V, 3) (camera, row, column) of every
    visual token in prompt order; a leading extra token (CLS) sits at the image centre. Remembered
    (callers only read the tensor)."""
    out = []
    for i, (rows, cols, extra) in enumerate(grids):
        r = (torch.arange(rows * cols) // cols + 0.5) / rows
        c = (torch.arange(rows * cols) % cols + 0.5) / cols
        grid = torch.stack([torch.full_like(r, float(i % cameras)), r, c], dim=1)  # (rows*cols, 3)
        centre = torch.tensor([[float(i % cameras), 0.5, 0.5]]).expand(extra, 3)
        out.append(torch.cat([centre, grid]))
    return torch.cat(out)


def _load_preprocessors(src: Path):
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    # PIL backend always: training and inference pixels must not depend on torchvision being installed
    image_processor = AutoImageProcessor.from_pretrained(src, local_files_only=True, backend="pil")
    return tokenizer, image_processor


def _freeze_unused_vision_layers(model: nn.Module) -> None:
    """LLaVA reads an inner vision layer (vision_feature_layer, e.g. -2): the layers above it and the
    final norm get no gradient, which DDP treats as an error. They are frozen (still saved and loaded)."""
    cfg = model.config
    n = cfg.vision_config.num_hidden_layers
    feature_layers = cfg.vision_feature_layer
    feature_layers = feature_layers if isinstance(feature_layers, list | tuple) else [feature_layers]
    used = max(i % (n + 1) for i in feature_layers)  # hidden_states[i] is the output of layer i - 1
    tower = getattr(model.vision_tower, "vision_model", model.vision_tower)  # CLIP / SigLIP layouts
    for layer in tower.encoder.layers[used:]:
        layer.requires_grad_(False)
    for name in ("post_layernorm", "head"):  # final norm, SigLIP's pooling head: read by nothing
        if isinstance(getattr(tower, name, None), nn.Module):
            getattr(tower, name).requires_grad_(False)
