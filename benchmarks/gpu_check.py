"""GPU check of issue 7: what the temporal supervision costs a training step, and Euler steps at inference.

On model_step.py's "mid" random config (Qwen2.5-VL language model of 8 layers x 512, DiT of
8 blocks x 512, built offline), under bf16 autocast, medians of interleaved runs:
  (a) optimizer step time (forward + backward + AdamW step) of
        fm_only      plain flow matching, one VLM pass
        sagr_naive   SA-GR, chain_length 1: every t+k pair through the extra no-grad VLM pass
        sagr_chain   SA-GR, chain_length 4 (datasets.vla_data.chain_length): samples come in
                     chains t, t+k, ..., collate's tk_index lets 3 of every 4 pairs reuse tokens
        sagr_chain_fused  as sagr_chain, with framework.action_model.target_pass fused: the 4
                     remaining t+k frames ride in the image_t VLM call instead of a call of their own
        sagr_chain_fused_compiled  as sagr_chain_fused, with framework.action_model.compile_world:
                     the anchor, world predictor and drift under torch.compile (compiled before timing)
        fm_only_hf_vision fm_only with transformers' own vision-tower path (an attention call per
                     window or image, positions built on the device), which sagrflow replaces
      and the ratio of each to fm_only;
  (c) predict_action latency with 10 Euler steps against 1, and their ratio, with the Euler loop
      replayed as a CUDA graph (the default) and eager, and how far the two chunks differ.
It prints a compact table and writes gpu_check.json to $OUT (or --out) when set.

    python3 benchmarks/gpu_check.py                       # CUDA, mid config, batch 16
    python3 benchmarks/gpu_check.py --device cpu --small --threads 1  # quick rehearsal: tiny config, batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import sagrflow.model.backbone as backbone_module
from model_step import CAMS, SIDE, S, alternate, build, fake_batch, train_step
from sagrflow.model.qwen_vision import PATCHED, llm_positions

# mode -> (fm_only, chain_length, framework.action_model.target_pass, compile_world)
TRAIN_MODES = {"fm_only": (True, 1, "separate", False), "sagr_naive": (False, 1, "separate", False),
               "sagr_chain": (False, 4, "separate", False), "sagr_chain_fused": (False, 4, "fused", False),
               "sagr_chain_fused_compiled": (False, 4, "fused", True)}


def train_times(policies: dict[bool, object], batch_size: int, iters: int, device: str,
                dtype) -> dict[str, dict[str, float]]:
    """Median seconds per optimizer step of each mode, and the peak memory of one step on CUDA.
    `policies`: compile_world -> a policy (the same weights)."""
    optimizers = {c: torch.optim.AdamW(p.parameters(), lr=1e-5) for c, p in policies.items()}
    batches = {m: fake_batch(batch_size, device, chain) for m, (_, chain, _, _) in TRAIN_MODES.items()}

    def step(mode: str) -> None:
        fm, _, target_pass, compiled = TRAIN_MODES[mode]
        policies[compiled].config.action_model.target_pass = target_pass
        train_step(policies[compiled], batches[mode], fm, optimizers[compiled], dtype)

    steps = {m: partial(step, m) for m in TRAIN_MODES}
    steps["fm_only_hf_vision"] = partial(hf_vision, policies[False], steps["fm_only"])
    compile_start = time.perf_counter()
    steps["sagr_chain_fused_compiled"]()  # the compile, outside the timing (alternate warms up once more)
    compile_s = time.perf_counter() - compile_start
    seconds = alternate(steps, iters, device)
    out = {m: {"ms": seconds[m] * 1e3} for m in steps}
    if device.startswith("cuda"):
        for m, fn in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            out[m]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for m in steps:
        out[m]["ratio_to_fm_only"] = out[m]["ms"] / out["fm_only"]["ms"]
    tk = batches["sagr_chain"].tk_index
    out["sagr_chain"]["reused_pairs"] = float((tk >= 0).float().mean())
    out["sagr_chain_fused_compiled"]["first_step_s"] = compile_s
    return out


def hf_vision(policy, fn) -> None:
    """fn() with transformers' own vision-tower path: one attention call per window or image, and the
    tower's positions and boundaries built on the device (what sagrflow replaces)."""
    modules = [m for m in policy.backbone.vlm.modules() if "forward" in vars(m) and type(m).__name__ in PATCHED]
    saved = [vars(m).pop("forward") for m in modules]
    original = backbone_module.host_position_inputs
    # the LLM's positions stay host-built, as in the README's measurements of this mode
    backbone_module.host_position_inputs = lambda model, inputs, device: {
        "position_ids": llm_positions(model, inputs).to(device)}
    try:
        fn()
    finally:
        backbone_module.host_position_inputs = original
        for m, f in zip(modules, saved, strict=True):
            m.forward = f


def predict_times(policy, iters: int, device: str, dtype) -> dict[str, float]:
    """predict_action at N=1 and N=10, with CUDA graphs (the default) and eager, and the largest
    difference between the graph's and the eager chunk for the same noise."""
    policy.eval()
    rng = np.random.default_rng(0)
    obs = [{"image": [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(CAMS)],
            "lang": "pick up the black bowl", "state": np.zeros(S)}]
    am = policy.config.action_model

    def predict(n: int, graphs: bool = True, seed: int | None = None):
        am.cuda_graphs = graphs
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            policy.reset()  # every call is an episode's first: the same work for both
            return policy.predict_action(obs, num_steps=n, generator=generator)["actions_normalized"]

    gap = max(float(np.abs(predict(n, True, 7) - predict(n, False, 7)).max()) for n in (1, 10))
    seconds = alternate({1: lambda: predict(1), 10: lambda: predict(10), "eager10": lambda: predict(10, False),
                         "eager1": lambda: predict(1, False)}, iters, device)
    am.cuda_graphs = True
    policy.train()
    return {"n1_ms": seconds[1] * 1e3, "n10_ms": seconds[10] * 1e3, "ratio": seconds[10] / seconds[1],
            "eager_n1_ms": seconds["eager1"] * 1e3, "eager_n10_ms": seconds["eager10"] * 1e3,
            "eager_ratio": seconds["eager10"] / seconds["eager1"], "graph_vs_eager_max_abs": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny config, batch 4, 3 iterations: a quick CPU rehearsal")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (4 with --small)")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per mode (default 20, 3 with --small)")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                        help="autocast dtype (fp32: none); default bf16 on CUDA, fp32 on CPU (where bf16 is emulated, slow)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --small for the CPU rehearsal")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "tiny" if args.small else "mid"
    batch_size = args.batch_size or (4 if args.small else 16)
    iters = args.iters or (3 if args.small else 20)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars, per build
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="sagrflow-gpu-check-"))
    policy = build(name, root, args.device)
    built = time.perf_counter() - start
    train = train_times({False: policy, True: build(name, root, args.device, compile_world=True)},
                        batch_size, iters, args.device, dtype)
    predict = predict_times(policy, iters, args.device, dtype)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {"device": device, "torch": torch.__version__, "config": name, "batch_size": batch_size, "iters": iters,
              "autocast": args.dtype, "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
              "train": train, "predict_action": predict, "build_s": built, "total_s": time.perf_counter() - start}
    print(f"{device}, torch {torch.__version__}, {name} config ({result['params_m']:.1f}M params), batch {batch_size}, "
          f"autocast {args.dtype}, medians of {iters} interleaved runs, built in {built:.0f}s")
    print(f"(a) optimizer step              {'ms':>8} {'x fm_only':>10} {'peak MiB':>9}")
    for mode, row in train.items():
        peak = f"{row['peak_mib']:9.0f}" if "peak_mib" in row else f"{'-':>9}"
        print(f"    {mode:26s} {row['ms']:8.1f} {row['ratio_to_fm_only']:9.2f}x {peak}")
    print(f"    (sagr_chain reuses the t+k tokens of {train['sagr_chain']['reused_pairs']:.0%} of the pairs; "
          f"the compiled world modules' first step took {train['sagr_chain_fused_compiled']['first_step_s']:.0f}s)")
    print(f"(c) predict_action      N=1 {predict['n1_ms']:.1f} ms   N=10 {predict['n10_ms']:.1f} ms   "
          f"ratio {predict['ratio']:.2f}x (target <= 1.5x)")
    print(f"    eager Euler loop     N=1 {predict['eager_n1_ms']:.1f} ms   N=10 {predict['eager_n10_ms']:.1f} ms   "
          f"ratio {predict['eager_ratio']:.2f}x; graph vs eager chunk max |diff| {predict['graph_vs_eager_max_abs']:.2e}")
    print(f"total {result['total_s']:.0f}s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
