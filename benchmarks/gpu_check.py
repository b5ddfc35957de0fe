"""GPU check of issue 7: what the temporal supervision costs a training step, and Euler steps at inference.

On model_step.py's "mid" random config (Qwen2.5-VL language model of 8 layers x 512, DiT of
8 blocks x 512, built offline) or its "large" one (`--config large`: Qwen2.5-VL-3B's vision tower
and 12 of its 36 LLM layers, DiT of width 1024), under bf16 autocast, medians of interleaved runs:
  (a) optimizer step time (forward + backward + AdamW step) of
        fm_only      plain flow matching, one VLM pass
        sagr_naive   SA-GR, chain_length 1: every t+k pair through the extra no-grad VLM pass
        sagr_chain   SA-GR, chain_length 4 (datasets.vla_data.chain_length; `--chain-length`): samples
                     come in chains t, t+k, ..., collate's tk_index lets 3 of every 4 pairs reuse tokens
        sagr_chain_fused  as sagr_chain, with framework.action_model.target_pass fused: the
                     remaining t+k frames (1 in 4) ride in the image_t VLM call instead of a call of their own
        sagr_chain_fused_compiled  as sagr_chain_fused, with the anchor, world predictor and drift
                     under torch.compile (`--compile`: `dynamic` is framework.action_model.compile_world
                     true, `auto` torch's default shape handling, `graphs` its mode="reduce-overhead", CUDA
                     graphs; `graphs_fixed` the same for the world predictor and drift only, whose shapes
                     do not follow the prompt: compile_world "graphs"), compiled before the timing on two
                     prompt lengths, as training meets them
        fm_only_hf_vision fm_only with transformers' own vision-tower path (an attention call per
                     window or image, positions built on the device), which sagrflow replaces
        fm_only_hf_inputs, sagr_chain_fused_hf_inputs  fm_only and sagr_chain_fused with the LLM's
                     attention mask and transformers' masked_scatter of the image features: the
                     device read-backs (syncs) that `VLMBackbone.call_inputs` leaves out; and the
                     target plan read back from the device batch, not made from the host copy
      and the ratio of each to fm_only;
  (c) predict_action latency with 10 Euler steps against 1, and their ratio, with the Euler loop
      replayed as a CUDA graph (the default) and eager, and how far the two chunks differ.
It prints a compact table and writes gpu_check_<config>_b<batch>_<compile>[_chain<N>].json to $OUT
(or --out) when set. `--profile` adds, for the fused and the compiled mode, kernel launches and GPU
busy time per step and the top kernels.

    python3 benchmarks/gpu_check.py                       # CUDA, mid config, batch 16
    python3 benchmarks/gpu_check.py --config large --compile none --train-only  # Qwen2.5-VL-3B's shapes
    python3 benchmarks/gpu_check.py --device cpu --small --threads 1  # quick rehearsal: tiny config, batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

import sagrflow.model.backbone as backbone_module
from model_step import CAMS, SIDE, S, alternate, alternate_runs, build, fake_batch, train_step
from sagrflow.model.policy import COMPILE_WORLD
from sagrflow.model.qwen_vision import PATCHED, llm_positions

# mode -> (fm_only, chained (chain_length from --chain-length) or not, framework.action_model.target_pass, compile_world)
TRAIN_MODES = {"fm_only": (True, False, "separate", False), "sagr_naive": (False, False, "separate", False),
               "sagr_chain": (False, True, "separate", False), "sagr_chain_fused": (False, True, "fused", False),
               "sagr_chain_fused_compiled": (False, True, "fused", True)}
# --compile -> torch.compile options of the world modules (SAGRPolicy.compile_world)
COMPILE = {"dynamic": {"dynamic": True}, "auto": {"dynamic": None},
           "graphs": {"dynamic": None, "mode": "reduce-overhead"},
           # framework.action_model.compile_world: graphs, the two modules of fixed shapes only: one graph each
           "graphs_fixed": {**COMPILE_WORLD["graphs"][1], "modules": COMPILE_WORLD["graphs"][0]}}


def train_times(policy, compiled: bool, batch_size: int, iters: int, device: str,
                dtype, hf: bool = True, profile: bool = False, chain_length: int = 4) -> dict[str, dict[str, float]]:
    """Median ms per optimizer step of each mode, its ratio to fm_only's, the quartiles of the
    per-round ratios (each round times every mode once, in an order of its own: how far the ratio
    moves from round to round; a bias that lasts the whole process, which only a second process
    shows, leaves them tight), and the peak memory of one step on CUDA.
    `compiled`: the policy's world modules are compiled (SAGRPolicy.compile_world), for the compiled mode;
    every other mode runs them eagerly (SAGRPolicy.eager), so one policy, one optimizer, serves all."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    modes = {m: spec for m, spec in TRAIN_MODES.items() if compiled or not spec[3]}
    hosts = {m: fake_batch(batch_size, "cpu", chain_length if chained else 1) for m, (_, chained, _, _) in modes.items()}
    batches = {m: host.to(device) for m, host in hosts.items()}

    def step(mode: str, host=None, read_plan: bool = False) -> None:
        """One step of `mode` on its batch, or on `host` moved to the device; the t+k plan made from the
        host copy, as the trainer does, unless `read_plan` (the forward then reads it back, as it used to)."""
        fm, _, target_pass, uses_compiled = TRAIN_MODES[mode]
        policy.config.action_model.target_pass = target_pass
        if host is None:
            host, batch = hosts[mode], batches[mode]
        else:
            batch = host.to(device)
        with nullcontext() if uses_compiled else policy.eager():
            train_step(policy, batch, fm, optimizer, dtype, None if read_plan else host)

    steps = {m: partial(step, m) for m in modes}
    for mode in ("fm_only", "sagr_chain_fused"):  # every read-back the step used to have, the plan's included
        steps[f"{mode}_hf_inputs"] = partial(hf_inputs, policy, partial(step, mode, read_plan=True))
    if hf:
        steps["fm_only_hf_vision"] = partial(hf_vision, policy, steps["fm_only"])
    compile_start = time.perf_counter()
    if "sagr_chain_fused_compiled" in steps:
        # the compile, outside the timing: a second prompt length first (the VLM sequence changes from batch
        # to batch in training), then the timed batch a few times (CUDA graphs record at the second call)
        host = hosts["sagr_chain_fused_compiled"]
        step("sagr_chain_fused_compiled", replace(host, lang=tuple(s + " then close the drawer" for s in host.lang)))
        for _ in range(3):
            steps["sagr_chain_fused_compiled"]()
    compile_s = time.perf_counter() - compile_start
    runs = {m: np.array(v) for m, v in alternate_runs(steps, iters, device).items()}
    out = {m: {"ms": float(np.median(v)) * 1e3} for m, v in runs.items()}
    if device.startswith("cuda"):
        for m, fn in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            out[m]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for m in steps:
        out[m]["ratio_to_fm_only"] = out[m]["ms"] / out["fm_only"]["ms"]
        out[m]["round_ratio_quartiles"] = np.percentile(runs[m] / runs["fm_only"], [25, 50, 75]).tolist()
        out[m]["round_ms"] = (runs[m] * 1e3).tolist()  # gpu_pool.py pools the rounds of several processes
    # the SA-GR / fm-only ratio with the read-backs, beside the one without (sagr_chain_fused's)
    out["sagr_chain_fused_hf_inputs"]["ratio_to_fm_only_hf_inputs"] = (
        out["sagr_chain_fused_hf_inputs"]["ms"] / out["fm_only_hf_inputs"]["ms"])
    tk = batches["sagr_chain"].tk_index
    out["sagr_chain"]["reused_pairs"] = float((tk >= 0).float().mean())
    if "sagr_chain_fused_compiled" in out:
        out["sagr_chain_fused_compiled"]["first_step_s"] = compile_s
    if profile:
        for mode in ("sagr_chain_fused", "sagr_chain_fused_compiled"):
            if mode in steps:
                out[mode]["profile"] = profiled(steps[mode])
    return out


def profiled(fn, steps: int = 3, top: int = 8, cuda: bool = True, trace: Path | None = None) -> dict:
    """Per step: kernel launches (graph replays count one), GPU kernel time, the `top` kernels by GPU
    time, the host (CPU) ms of each kind of backward node, and the count and host ms of each CUDA
    runtime call (launches, copies, allocations, synchronizations), from torch.profiler. `trace`: also
    write the profile as a gzipped Chrome trace (chrome://tracing, Perfetto) to that path."""
    import gzip
    import os

    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        raw = trace.with_suffix("")  # the profiler writes plain JSON
        prof.export_chrome_trace(str(raw))
        trace.write_bytes(gzip.compress(raw.read_bytes()))
        os.remove(raw)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                        "cudaGraphLaunch", "cuLaunchKernelEx"))
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    node = "autograd::engine::evaluate_function: "
    backward = {e.key[len(node):]: [e.count // steps, e.cpu_time_total / 1e3 / steps]
                for e in events if e.key.startswith(node)}
    return {"launches_per_step": launches / steps,
            "gpu_ms_per_step": sum(e.self_device_time_total for e in kernels) / 1e3 / steps,
            "top": [[e.key[:70], e.count // steps, e.self_device_time_total / 1e3 / steps] for e in kernels[:top]],
            "backward_cpu_ms": backward,
            "runtime_cpu_ms": {e.key: [e.count / steps, e.cpu_time_total / 1e3 / steps] for e in events
                               if e.key.startswith("cu") and e.device_type == torch.autograd.DeviceType.CPU}}


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


def hf_inputs(policy, fn) -> None:
    """fn() with the VLM called as before sagrflow removed its device read-backs: the attention mask
    given, the image features placed by transformers' masked_scatter, the inputs copied from pageable
    memory (host-built positions kept)."""
    backbone = policy.backbone

    def call_inputs(cpu_inputs, visual, device):
        inputs = {k: v.to(device, non_blocking=True) for k, v in cpu_inputs.items()}
        inputs.update(backbone_module.host_position_inputs(backbone.vlm, cpu_inputs, device))
        inputs["pixel_values"] = inputs["pixel_values"].to(backbone.vlm.dtype)
        return inputs

    backbone.call_inputs = call_inputs
    try:
        fn()
    finally:
        del backbone.call_inputs


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
    parser.add_argument("--config", default="mid", choices=("mid", "large"),
                        help="model_step.py's config: mid (89M parameters) or large (Qwen2.5-VL-3B's shapes, 12 LLM layers)")
    parser.add_argument("--compile", default="dynamic", choices=[*sorted(COMPILE), "none"],
                        help="torch.compile options of the compiled mode (default dynamic: compile_world true's; "
                             "none: no compiled mode)")
    parser.add_argument("--chain-length", type=int, default=4, help="chain_length of the sagr_chain modes (default 4)")
    parser.add_argument("--train-only", action="store_true", help="(a) only, without fm_only_hf_vision")
    parser.add_argument("--profile", action="store_true", help="profile the fused and the compiled mode (CUDA)")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args()
    if args.small and args.config != "mid":
        parser.error(f"--small runs the tiny config; drop it or --config {args.config}")
    if args.chain_length < 2:
        parser.error(f"--chain-length {args.chain_length}: a chain has at least 2 samples (1 is sagr_naive)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --small for the CPU rehearsal")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "tiny" if args.small else args.config
    batch_size = args.batch_size or (4 if args.small else 16)
    if batch_size % args.chain_length:  # as datasets.vla_data.chain_length must divide the batch
        parser.error(f"--chain-length {args.chain_length} does not divide the batch of {batch_size}")
    iters = args.iters or (3 if args.small else 20)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars, per build
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="sagrflow-gpu-check-"))
    policy = build(name, root, args.device)
    built = time.perf_counter() - start
    if args.compile != "none":
        policy.compile_world(**COMPILE[args.compile])
    train = train_times(policy, args.compile != "none", batch_size, iters, args.device, dtype,
                        hf=not args.train_only, profile=args.profile and args.device.startswith("cuda"),
                        chain_length=args.chain_length)
    predict = None if args.train_only else predict_times(policy, iters, args.device, dtype)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {"device": device, "torch": torch.__version__, "config": name, "batch_size": batch_size, "iters": iters,
              "autocast": args.dtype, "compile": args.compile, "chain_length": args.chain_length, "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
              "train": train, "predict_action": predict, "build_s": built, "total_s": time.perf_counter() - start}
    print(f"{device}, torch {torch.__version__}, {name} config ({result['params_m']:.1f}M params), batch {batch_size}, "
          f"autocast {args.dtype}, chain_length {args.chain_length}, medians of {iters} interleaved runs, built in {built:.0f}s")
    print(f"(a) optimizer step              {'ms':>8} {'x fm_only':>10} {'peak MiB':>9}   per-round ratio q1-q3")
    for mode, row in train.items():
        peak = f"{row['peak_mib']:9.0f}" if "peak_mib" in row else f"{'-':>9}"
        q1, _, q3 = row["round_ratio_quartiles"]
        print(f"    {mode:26s} {row['ms']:8.1f} {row['ratio_to_fm_only']:9.2f}x {peak}   {q1:.2f}-{q3:.2f}")
    hf_ratio = train["sagr_chain_fused_hf_inputs"]["ratio_to_fm_only_hf_inputs"]
    print(f"    (with the read-backs, sagr_chain_fused / fm_only: {hf_ratio:.2f}x; "
          f"without: {train['sagr_chain_fused']['ratio_to_fm_only']:.2f}x)")
    compiled = train.get("sagr_chain_fused_compiled")
    print(f"    (sagr_chain reuses the t+k tokens of {train['sagr_chain']['reused_pairs']:.0%} of the pairs"
          + (f"; compiling the world modules ({args.compile}) took {compiled['first_step_s']:.0f}s)" if compiled else ")"))
    for mode in ("sagr_chain_fused", "sagr_chain_fused_compiled"):
        if "profile" in train.get(mode, {}):
            prof = train[mode]["profile"]
            print(f"    profile {mode}: {prof['launches_per_step']:.0f} launches, {prof['gpu_ms_per_step']:.1f} GPU ms per step")
            for key, count, ms in prof["top"]:
                print(f"      {ms:7.2f} ms {count:5d}x  {key}")
    if predict is not None:
        print_predict(predict)
    print(f"total {result['total_s']:.0f}s")
    chain = "" if args.chain_length == 4 else f"_chain{args.chain_length}"
    write_result(args.out, f"gpu_check_{name}_b{batch_size}_{args.compile}{chain}.json", result)


def write_result(out: Path | None, filename: str, result: dict) -> None:
    """The result as JSON under `out` ($OUT or --out), when there is one."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / filename).write_text(json.dumps(result, indent=1))
        print(f"wrote {out / filename}")


def print_predict(predict: dict) -> None:
    print(f"(c) predict_action      N=1 {predict['n1_ms']:.1f} ms   N=10 {predict['n10_ms']:.1f} ms   "
          f"ratio {predict['ratio']:.2f}x (target <= 1.5x)")
    print(f"    eager Euler loop     N=1 {predict['eager_n1_ms']:.1f} ms   N=10 {predict['eager_n10_ms']:.1f} ms   "
          f"ratio {predict['eager_ratio']:.2f}x; graph vs eager chunk max |diff| {predict['graph_vs_eager_max_abs']:.2e}")


if __name__ == "__main__":
    main()
