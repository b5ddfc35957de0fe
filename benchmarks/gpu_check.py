"""GPU check of issue 7: what the temporal supervision costs a training step, and Euler steps at inference.

On model_step.py's "mid" random config (Qwen2.5-VL language model of 8 layers x 512, DiT of
8 blocks x 512, built offline), under bf16 autocast, medians of interleaved runs:
  (a) optimizer step time (forward + backward + AdamW step) of
        fm_only      plain flow matching, one VLM pass
        sagr_naive   SA-GR, chain_length 1: every t+k pair through the extra no-grad VLM pass
        sagr_chain   SA-GR, chain_length 4 (datasets.vla_data.chain_length): samples come in
                     chains t, t+k, ..., collate's tk_index lets 3 of every 4 pairs reuse tokens
      and the ratio of each to fm_only;
  (c) predict_action latency with 10 Euler steps against 1, and their ratio.
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
from pathlib import Path

import numpy as np
import torch

from model_step import CAMS, SIDE, S, alternate, build, fake_batch, train_step

TRAIN_MODES = {"fm_only": (True, 1), "sagr_naive": (False, 1), "sagr_chain": (False, 4)}  # fm_only, chain_length


def train_times(policy, batch_size: int, iters: int, device: str, dtype) -> dict[str, dict[str, float]]:
    """Median seconds per optimizer step of each mode, and the peak memory of one step on CUDA."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    batches = {m: fake_batch(batch_size, device, chain) for m, (_, chain) in TRAIN_MODES.items()}
    steps = {m: (lambda m=m, fm=fm: train_step(policy, batches[m], fm, optimizer, dtype))
             for m, (fm, _) in TRAIN_MODES.items()}
    seconds = alternate(steps, iters, device)
    out = {m: {"ms": seconds[m] * 1e3} for m in TRAIN_MODES}
    if device.startswith("cuda"):
        for m, step in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            out[m]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for m in TRAIN_MODES:
        out[m]["ratio_to_fm_only"] = out[m]["ms"] / out["fm_only"]["ms"]
    tk = batches["sagr_chain"].tk_index
    out["sagr_chain"]["reused_pairs"] = float((tk >= 0).float().mean())
    return out


def predict_times(policy, iters: int, device: str, dtype) -> dict[str, float]:
    policy.eval()
    rng = np.random.default_rng(0)
    obs = [{"image": [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(CAMS)],
            "lang": "pick up the black bowl", "state": np.zeros(S)}]

    def predict(n: int):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            policy.reset()  # every call is an episode's first: the same work for both
            policy.predict_action(obs, num_steps=n)

    seconds = alternate({1: lambda: predict(1), 10: lambda: predict(10)}, iters, device)
    policy.train()
    return {"n1_ms": seconds[1] * 1e3, "n10_ms": seconds[10] * 1e3, "ratio": seconds[10] / seconds[1]}


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
    policy = build(name, Path(tempfile.mkdtemp(prefix="sagrflow-gpu-check-")), args.device)
    built = time.perf_counter() - start
    train = train_times(policy, batch_size, iters, args.device, dtype)
    predict = predict_times(policy, iters, args.device, dtype)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {"device": device, "torch": torch.__version__, "config": name, "batch_size": batch_size, "iters": iters,
              "autocast": args.dtype, "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
              "train": train, "predict_action": predict, "build_s": built, "total_s": time.perf_counter() - start}
    print(f"{device}, torch {torch.__version__}, {name} config ({result['params_m']:.1f}M params), batch {batch_size}, "
          f"autocast {args.dtype}, medians of {iters} interleaved runs, built in {built:.0f}s")
    print(f"(a) optimizer step      {'ms':>8} {'x fm_only':>10} {'peak MiB':>9}")
    for mode, row in train.items():
        peak = f"{row['peak_mib']:9.0f}" if "peak_mib" in row else f"{'-':>9}"
        print(f"    {mode:18s} {row['ms']:8.1f} {row['ratio_to_fm_only']:9.2f}x {peak}")
    print(f"    (sagr_chain reuses the t+k tokens of {train['sagr_chain']['reused_pairs']:.0%} of the pairs)")
    print(f"(c) predict_action      N=1 {predict['n1_ms']:.1f} ms   N=10 {predict['n10_ms']:.1f} ms   "
          f"ratio {predict['ratio']:.2f}x (target <= 1.5x)")
    print(f"total {result['total_s']:.0f}s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
