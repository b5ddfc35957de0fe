"""Offline tiny backbones: real transformers architectures with random weights.

`make_tiny(arch, out_dir)` writes, with `save_pretrained`, a model directory that the
backbone adapter loads exactly like a downloaded checkpoint (config.json, weights,
tokenizer files, preprocessor_config.json). Nothing is downloaded: the tokenizer is a
character-level `tokenizers` model holding the architecture's special tokens, the
image processor is the architecture's PIL-backend class (no torchvision).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

ARCHS = ("qwen2_5_vl", "qwen3_vl", "llava")

# printable ASCII, one token per character: any instruction tokenizes without an unknown token
_CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
_LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def _tokenizer(specials: list[str], pad: str, eos: str, bos: str | None, unk: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials + _CHARS)}
    unk_token = unk or pad
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    special_kwargs = {"pad_token": pad, "eos_token": eos, "unk_token": unk_token}
    if bos is not None:
        special_kwargs["bos_token"] = bos
    named = set(special_kwargs.values())
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, extra_special_tokens=[s for s in specials if s not in named], **special_kwargs
    )
    fast.padding_side = "right"
    return fast, vocab


def _qwen_common(vocab: dict[str, int]) -> dict:
    return dict(
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )


def _text_kwargs(vocab_size: int, pad_id: int, hidden: int, layers: int) -> dict:
    head_dim = 16 if hidden < 256 else 64
    heads = max(1, hidden // head_dim)
    return dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=1024,
        pad_token_id=pad_id,
    )


# published shapes, for benchmarks at a real model's size (random weights, any number of LLM layers)
PRESETS = {
    "qwen2_5_vl_3b": {  # Qwen2.5-VL-3B-Instruct's config.json (its LLM has 36 layers)
        "text": dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2),
        "rope_theta": 1000000.0,
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    },
}


def _mrope_section(text: dict) -> list[int]:
    """Qwen's multimodal rope splits half the head dim over (t, h, w) as 1/4, 3/8, 3/8."""
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    return [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]


def _build_qwen2_5_vl(hidden: int, layers: int, preset: str | None = None):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, vocab = _tokenizer(_QWEN_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>", bos=None, unk=None)
    text = _text_kwargs(len(vocab), vocab["<|endoftext|>"], hidden, layers)
    text.update(bos_token_id=None, eos_token_id=vocab["<|im_end|>"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56, fullatt_block_indexes=[1])
    shapes = PRESETS[preset] if preset is not None else {"text": {}, "vision": {}, "rope_theta": 10000.0}
    text.update(shapes["text"])
    vision.update(shapes["vision"])
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": shapes["rope_theta"],
                               "mrope_section": _mrope_section(text)}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(vision, out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        **_qwen_common(vocab),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    # images keep their size (rounded to the 28-pixel merge unit) up to 224x224: 56x56 -> 4x4 patches
    # of 14 -> 2x2 merged tokens, 112x112 -> 4x4 tokens. A cap at 56x56 used to shrink every input
    # to 2x2 tokens per camera, whatever framework.backbone.image_size said.
    processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=224 * 224, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return model, tokenizer, processor


def _build_qwen3_vl(hidden: int, layers: int):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, vocab = _tokenizer(_QWEN_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>", bos=None, unk=None)
    text = _text_kwargs(len(vocab), vocab["<|endoftext|>"], hidden, layers)
    text.update(head_dim=hidden // text["num_attention_heads"], bos_token_id=None, eos_token_id=vocab["<|im_end|>"])
    text["rope_parameters"] = {
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(text),
        "mrope_interleaved": True,
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        ),
        **_qwen_common(vocab),
    )
    model = Qwen3VLForConditionalGeneration(config)
    # Qwen3-VL patches are 16 pixels, the merge unit 32: 64x64 -> 4x4 patches -> 2x2 merged tokens,
    # larger images keep their size up to 256x256
    processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256}, patch_size=16, merge_size=2,
        temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return model, tokenizer, processor


def _build_llava(hidden: int, layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer, vocab = _tokenizer(_LLAVA_SPECIALS, pad="<pad>", eos="</s>", bos="<s>", unk="<unk>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=32,
    )
    text = LlamaConfig(**_text_kwargs(len(vocab), vocab["<pad>"], hidden, layers), bos_token_id=vocab["<s>"],
                       eos_token_id=vocab["</s>"])
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=vocab["<image>"],
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=4,
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return model, tokenizer, processor


_BUILDERS = {"qwen2_5_vl": _build_qwen2_5_vl, "qwen3_vl": _build_qwen3_vl, "llava": _build_llava}


def make_tiny(arch: str, out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 4,
              preset: str | None = None, weights: bool = True) -> Path:
    """Write a tiny random-weight `arch` checkpoint (model, tokenizer, image processor) to `out_dir`.

    `hidden_size` / `num_layers` size the language model (e.g. 512 / 8 for benchmarks);
    the vision tower stays tiny. `preset` (a key of PRESETS, Qwen2.5-VL only) takes a published
    model's shapes instead, tower included, with `num_layers` LLM layers. `weights=False` writes
    the model's config instead of its weights (built on the meta device, in seconds at any size):
    an architecture for `VLMBackbone.from_config_dir`, as shape-only benchmarks need.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny arch {arch!r}; use one of {ARCHS}")
    if preset is not None and (arch != "qwen2_5_vl" or preset not in PRESETS):
        raise ValueError(f"preset {preset!r} for {arch!r}: presets are {sorted(PRESETS)}, for qwen2_5_vl")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if weights else "meta"):
        torch.manual_seed(seed)
        args = (hidden_size, num_layers) if preset is None else (hidden_size, num_layers, preset)
        model, tokenizer, image_processor = _BUILDERS[arch](*args)
    if weights:
        model.save_pretrained(out)
    else:
        model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


TINY_VERSION = 2  # bump when a builder changes, so cached directories are rebuilt


def cached_tiny(arch: str) -> Path:
    """The tiny `arch` checkpoint under the user cache, built on first use (atomic across processes)."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny arch {arch!r}; use one of {ARCHS}")
    root = Path(os.environ.get("SAGRFLOW_CACHE", Path.home() / ".cache" / "sagrflow")) / "tiny"
    target = root / f"{arch}-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
    make_tiny(arch, staging)
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its directory is identical
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target
