"""Host time of a Qwen VLM's input preparation per batch: built every step, or remembered.

A training step on a GPU at this project's sizes is bound by the host (benchmarks/gpu_profile.py).
Part of the host's work is pure Python that loops over rows and images: tokenizing the prompts,
the LLM's M-RoPE positions (transformers' `get_rope_index`), the vision tower's positions and
window order, the observation summary's token positions. It depends only on the prompts and
the image grids, so sagrflow builds each distinct one once. Side by side, in one process,
medians of interleaved runs, for the mid config's Qwen2.5-VL at 2 cameras of 224 px:
  built       what transformers does every step (its tokenizer's batch call, get_rope_index over
              the batch, the tower's functions over every image) and the positions built anew
  remembered  sagrflow's path, after a first batch has been seen (training repeats prompts)

    python3 benchmarks/host_inputs.py [--rows 16,64,80] [--iters 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from model_step import CAMS, SIDE, build, fake_batch
from sagrflow.model import backbone as backbone_module
from sagrflow.model import qwen_vision

INSTRUCTIONS = ("pick up the black bowl and place it on the plate", "open the top drawer", "put the cream cheese in the bowl",
                "turn on the stove")


def built(backbone, images: torch.Tensor, lang: list[str]) -> None:
    """Every host input made from scratch, as transformers makes it."""
    b, c = images.shape[:2]
    pixels = backbone_module.qwen_pixels(images.reshape(b * c, *images.shape[2:]), backbone.image_processor)
    grids = backbone._token_grids(pixels)
    texts = [backbone._prompt([r * w for r, w, _ in grids[i * c:(i + 1) * c]], t) for i, t in enumerate(lang)]
    tok = backbone.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=True)
    types = (tok["input_ids"] == backbone.image_token_id).int()
    backbone_module._visual_positions.__wrapped__(tuple(grids), c)
    qwen_vision._tower_positions(backbone.vlm.visual, pixels["image_grid_thw"])
    backbone.vlm.get_rope_index(tok["input_ids"], types, image_grid_thw=pixels["image_grid_thw"],
                                attention_mask=tok["attention_mask"])


def remembered(backbone, images: torch.Tensor, lang: list[str]) -> None:
    inputs = backbone.prepare_inputs(images, lang)
    inputs.pop("visual_pos")
    qwen_vision.host_position_inputs(backbone.vlm, inputs, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,64,80", help="batch rows (samples) to time")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = build("mid", Path(tempfile.mkdtemp(prefix="sagrflow-host-inputs-")), "cpu").backbone
    print(f"host ms per batch, mid config's Qwen2.5-VL, {CAMS} cameras of {SIDE} px, {len(INSTRUCTIONS)} instructions, "
          f"medians of {args.iters} interleaved runs")
    normalize = backbone_module.qwen_pixels
    for rows in (int(r) for r in args.rows.split(",")):
        images = fake_batch(rows, "cpu").image_t
        # the pixel normalization is GPU work in training: made once here, so both time the host alone
        pixels = normalize(images.reshape(-1, *images.shape[2:]), backbone.image_processor)
        backbone_module.qwen_pixels = lambda flat, processor, pixels=pixels: dict(pixels)
        lang = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(rows)]
        fns = {"built": partial(built, backbone, images, lang), "remembered": partial(remembered, backbone, images, lang)}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up; `remembered` sees its prompts and grids here
        for _ in range(args.iters):
            for k, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        backbone_module.qwen_pixels = normalize
        print(f"  {rows:3d} rows   built {ms['built']:7.2f}   remembered {ms['remembered']:7.2f}   "
              f"ratio {ms['built'] / ms['remembered']:.2f}x")


if __name__ == "__main__":
    main()
