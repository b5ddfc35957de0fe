"""Where a training step's time goes on a GPU: host phases, device syncs, kernels, Python functions.

gpu_check.py says what the temporal supervision costs; this says why. For fm-only and SA-GR
(chain_length 4 (`--chain-length`), target_pass fused and separate) on model_step.py's mid config
(`--config large`: Qwen2.5-VL-3B's shapes) under bf16 autocast:
  wall      ms per optimizer step, synchronized before and after (median)
  host      ms the host spends in forward (with the loss), backward and optimizer.step, with no
            synchronization inside the step; "wait" is what the final synchronize still waits for.
            host ~ wall and a short wait: the step is bound by the host issuing work, not the GPU
  syncs     host-device synchronizations in one step, and where they come from
  gpu       kernel launches and GPU kernel time per step, host time per kind of backward node,
            count and host time of each CUDA runtime call (allocations, copies, synchronizations)
            (torch.profiler)
  python    the functions whose own host time (cProfile) grows most from fm-only to SA-GR

    PYTHONPATH=src python3 benchmarks/gpu_profile.py [--batch-size 64]
    PYTHONPATH=src python3 benchmarks/gpu_profile.py --config large --batch-size 16 --chain-length 8
    PYTHONPATH=src python3 benchmarks/gpu_profile.py --device cpu --small   # rehearsal: no syncs, no kernels
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

from gpu_check import profiled, write_result
from model_step import build, fake_batch, sync, train_step
from sagrflow.model.losses import reduce_losses

SITES = ("sagrflow", "transformers", "benchmarks")  # where a sync site is named from
# mode -> (fm_only, framework.action_model.target_pass); SA-GR modes run in chains of --chain-length
MODES = {"fm_only": (True, "separate"), "sagr_fused": (False, "fused"), "sagr_separate": (False, "separate")}


def host_split(policy, batch, host, fm: bool, optimizer, dtype, steps: int, device: str) -> dict[str, float]:
    """Median host ms of forward+loss (the t+k plan made from `host`, as the trainer does), backward,
    optimizer step; the final wait; and the wall."""
    rows = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        plan = None if fm else policy.plan_targets(host)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            total, _ = reduce_losses(policy(batch, fm_only=fm, plan=plan), policy.config.action_model.loss_weights)
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        optimizer.step()
        policy.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        sync(device)
        t4 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
    names = ("forward", "backward", "optimizer", "wait", "wall")
    return {n: statistics.median(r[i] for r in rows) * 1e3 for i, n in enumerate(names)}


def sync_sites(fn, frames: int = 3) -> dict[str, int]:
    """Synchronizing CUDA calls in one fn() -> {innermost project / transformers frames: count}."""
    sites: collections.Counter = collections.Counter()
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        stack = [f for f in traceback.extract_stack()[:-1] if any(k in f.filename for k in SITES)]
        sites[" < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stack[-frames:]))] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown
    return dict(sites.most_common())


def python_time(fn, device: str, steps: int = 3) -> dict[str, float]:
    """cProfile's own (tottime) ms per step of each function, keyed file:function."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    sync(device)
    prof.disable()
    out: collections.Counter = collections.Counter()
    for (file, _, func), (_, _, own, _, _) in pstats.Stats(prof).stats.items():
        out[f"{file.split('site-packages/')[-1].split('/src/')[-1]}:{func}"] += own * 1e3 / steps
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (4 with --small)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny config, batch 4: a quick CPU rehearsal")
    parser.add_argument("--config", choices=("mid", "large"), default="mid",
                        help="large: Qwen2.5-VL-3B's vision tower and 12 LLM layers (about 45 s to build)")
    parser.add_argument("--chain-length", type=int, default=4, help="the SA-GR modes' chain length")
    parser.add_argument("--trace", action="store_true", help="also write each mode's profile (3 steps) as a gzipped "
                        "Chrome trace under --out: what the host ran while the GPU waited")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args()
    if args.small and args.config != "mid":
        parser.error(f"--small runs the tiny config; drop it or --config {args.config}")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --small for the rehearsal")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    name = "tiny" if args.small else args.config
    args.batch_size = args.batch_size or (4 if args.small else 64)
    policy = build(name, Path(tempfile.mkdtemp(prefix="sagrflow-gpu-profile-")), args.device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    dtype = torch.bfloat16 if cuda else None
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    result: dict = {"device": device_name, "torch": torch.__version__, "config": name, "batch_size": args.batch_size}
    result["chain_length"] = args.chain_length
    for mode, (fm, target_pass) in MODES.items():
        host = fake_batch(args.batch_size, "cpu", 1 if fm else args.chain_length)
        batch = host.to(args.device)
        policy.config.action_model.target_pass = target_pass  # read at each forward: one mode at a time

        def step(fm=fm, batch=batch, host=host, target_pass=target_pass):
            policy.config.action_model.target_pass = target_pass
            train_step(policy, batch, fm, optimizer, dtype, host)

        step()
        result[mode] = {"host_ms": host_split(policy, batch, host, fm, optimizer, dtype, args.steps, args.device),
                        "syncs": sync_sites(step) if cuda else {},
                        "gpu": profiled(step, cuda=cuda, trace=None if args.out is None or not args.trace else
                                        args.out / f"trace_{mode}_{name}_b{args.batch_size}.json.gz"),
                        "python_ms": python_time(step, args.device)}
    print(f"{device_name}, torch {result['torch']}, {name} config, batch {args.batch_size}, "
          f"chain {args.chain_length}, {'bf16 autocast' if cuda else 'fp32'}")
    for mode in MODES:
        r = result[mode]
        host = "  ".join(f"{k} {v:.1f}" for k, v in r["host_ms"].items())
        print(f"{mode:13s} ms: {host}; {r['gpu']['launches_per_step']:.0f} launches, "
              f"{r['gpu']['gpu_ms_per_step']:.1f} GPU ms; {sum(r['syncs'].values())} syncs")
        for site, n in list(r["syncs"].items())[:8]:
            print(f"    sync {n:3d}x {site}")
    fm_py, sagr_py = result["fm_only"]["python_ms"], result["sagr_fused"]["python_ms"]
    print("python functions with the most own host time in sagr_fused (ms per step):")
    for key in sorted(sagr_py, key=lambda k: -sagr_py[k])[:12]:
        print(f"    {sagr_py[key]:7.2f}  {key[-90:]}")
    grown = sorted(sagr_py, key=lambda k: fm_py.get(k, 0.0) - sagr_py[k])[:15]
    print("python functions whose own host time grows most, fm_only -> sagr_fused (ms per step):")
    for key in grown:
        print(f"    {fm_py.get(key, 0.0):7.2f} -> {sagr_py[key]:7.2f}  {key[-90:]}")
    fm_bw, sagr_bw = (result[m]["gpu"]["backward_cpu_ms"] for m in ("fm_only", "sagr_fused"))
    print("backward nodes whose host time grows most, fm_only -> sagr_fused (count and ms per step):")
    for key in sorted(sagr_bw, key=lambda k: fm_bw.get(k, [0, 0.0])[1] - sagr_bw[k][1])[:15]:
        (n0, ms0), (n1, ms1) = fm_bw.get(key, [0, 0.0]), sagr_bw[key]
        print(f"    {n0:5d} {ms0:7.2f} -> {n1:5d} {ms1:7.2f}  {key}")
    fm_rt, sagr_rt = (result[m]["gpu"]["runtime_cpu_ms"] for m in ("fm_only", "sagr_fused"))
    print("CUDA runtime calls, fm_only -> sagr_fused (count and host ms per step; a synchronize's ms is its wait):")
    for key in sorted(sagr_rt, key=lambda k: -sagr_rt[k][1])[:10]:
        (n0, ms0), (n1, ms1) = fm_rt.get(key, [0, 0.0]), sagr_rt[key]
        print(f"    {n0:7.1f} {ms0:7.2f} -> {n1:7.1f} {ms1:7.2f}  {key}")
    write_result(args.out, f"gpu_profile_{name}_b{args.batch_size}.json", result)


if __name__ == "__main__":
    main()
