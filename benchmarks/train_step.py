"""Trainer step cost of temporal supervision: full SA-GR against plain flow matching (fm-only).

Each SA-GR variant is the real `Trainer` (optimizer, clipping, reduction, metrics
bookkeeping) timed against an fm-only `Trainer` of the same settings on the same
pre-loaded batches (data loading left out). Steps alternate between every trainer of a
config and medians are compared, so drift in machine load hits all alike. Variants:
  naive      chain_length 1, VLM trained: every valid pair runs the no-grad t+k VLM pass
  optimized  chain_length L (--chain-length, default 2): a pair whose t+k frame is another
             sample's t frame reuses that sample's tokens; the rest run the last-layer-only pass
  frozen     backbone frozen in both trainers; SA-GR with the warm target cache (the steady
             state once every frame has been seen, e.g. after the first epoch of a small set)
For each it prints ms/step of both modes (medians), the cost ratio SA-GR / fm-only (the
median over batches of the ratio of the two adjacent steps on that batch), where the t+k
targets came from (VLM pass / reuse / cache, as shares of the samples), the share of the
SA-GR step spent in the t+k VLM pass, and the bytes autograd saves for backward (CPU) or
the peak allocated (CUDA). With `--threads 1` on a CPU the steps are timed in process CPU
time, which other processes' load on a shared machine leaves (mostly) alone; otherwise in
wall time.

Configs: tiny = the embedded default (tiny Qwen2.5-VL, 56 px); mid = model_step.py's mid
(Qwen2.5-VL language model of 8 layers, width 512, DiT width 512, R 4, 224 px cameras).

    python benchmarks/train_step.py [--configs tiny,mid] [--iters 10] [--batch-size 8] [--chain-length 2]

The numbers are a machine's, not a contract: timed assertions never go in tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sagrflow.data.loader import TemporalLoader, build_dataset
from sagrflow.data.synthetic import write_synthetic
from sagrflow.train.config import load_config
from sagrflow.train.trainer import Trainer

MODES = ("fm_only", "sagr")
SIM = ("sim_spatial", "sim_object", "sim_goal", "sim_long")
# per config: synthetic episode lengths, image side, overrides of the embedded tiny config
CONFIGS = {
    "tiny": {"lengths": [40, 30, 20], "side": 56, "overrides": {}},
    "mid": {"lengths": [24, 16, 12], "side": 224, "overrides": {
        "framework.backbone.image_size": [224, 224], "datasets.vla_data.image_size": [224, 224],
        "framework.action_model.dit_width": 512, "framework.action_model.dit_heads": 8,
        "framework.action_model.repeated_diffusion_steps": 4, "framework.action_model.num_task_tokens": 8,
        "framework.action_model.world_depth": 2}},
}
SOURCES = ("perf/target_pass_ratio", "perf/target_reuse_ratio", "perf/target_cache_ratio")


def variants(chain_length: int) -> dict[str, dict]:
    """name -> overrides shared by the variant's fm-only and SA-GR trainers."""
    return {
        "naive": {"datasets.vla_data.chain_length": 1},
        "optimized": {"datasets.vla_data.chain_length": chain_length},
        "frozen": {"datasets.vla_data.chain_length": 1, "trainer.freeze_modules": ["backbone"]},
    }


def make_trainer(fm_only: bool, data_root: Path, out: Path, batch_size: int, overrides: dict | None = None,
                 run_name: str | None = None) -> Trainer:
    cfg = load_config(None, {
        "datasets.vla_data.data_root_dir": str(data_root), "datasets.vla_data.num_workers": 0,
        "datasets.vla_data.per_device_batch_size": batch_size, "trainer.fm_only": fm_only,
        "trainer.output_dir": str(out), "trainer.run_name": run_name or ("fm_only" if fm_only else "sagr"),
        "trainer.logger": "none", "trainer.resume": "never", "trainer.save_interval": 0,
        "trainer.max_train_steps": 10_000, "trainer.sagr_phase_a_steps": 0, "trainer.sagr_phase_b_ramp_steps": 0,
        **(overrides or {}),
    })
    return Trainer(cfg)


def saved_bytes(trainer: Trainer, batch) -> int:
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in trainer.policy.parameters()}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.train_step([batch])
    return sum(storages.values())


def step(trainer: Trainer, batch) -> tuple[float, dict[str, float]]:
    """Wall seconds of one train_step, and {"t", "tk": the timer's VLM pass seconds, "cpu_s": the process's
    CPU seconds, the target sources}."""
    cuda = trainer.accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    values = trainer.train_step([batch])
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    spent = trainer.timer.collect()
    spent.update({k: values[k] for k in SOURCES}, cpu_s=cpu)
    return wall, spent


def memory(trainer: Trainer, batch) -> int:
    if trainer.accelerator.device.type != "cuda":
        return saved_bytes(trainer, batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(trainer, batch)
    return torch.cuda.max_memory_allocated() - base


def write_data(name: str, root: Path) -> Path:
    spec = CONFIGS[name]
    for i, ds in enumerate(SIM):
        write_synthetic(root / ds, spec["lengths"], seed=i, video_codec=None, image_size=(spec["side"],) * 2)
    return root


def config_overrides(name: str, root: Path) -> dict:
    overrides = dict(CONFIGS[name]["overrides"])
    if name == "mid":
        from model_step import CONFIGS as MODELS
        from sagrflow.model.tiny import make_tiny

        hidden, layers = MODELS["mid"]["llm"]
        path = root / "mid_vlm"
        if not (path / "config.json").exists():
            make_tiny("qwen2_5_vl", path, hidden_size=hidden, num_layers=layers)
        overrides["framework.backbone.path"] = str(path)
    return overrides


def pool_of(trainer: Trainer, n: int) -> list:
    """n batches of the trainer's own data settings (chain length), drawn once."""
    loader = TemporalLoader(build_dataset(trainer.cfg.data), trainer.cfg.data)
    batches = iter(loader)
    return [next(batches) for _ in range(n)]


def run_config(name: str, args, tmp: Path) -> dict[str, dict]:
    root = write_data(name, tmp / name / "data")
    base = config_overrides(name, tmp / name)
    trainers, pools = {}, {}
    for variant, extra in variants(args.chain_length).items():
        for mode in MODES:
            trainers[variant, mode] = make_trainer(mode == "fm_only", root, tmp / name / "runs", args.batch_size,
                                                   {**base, **extra}, run_name=f"{variant}_{mode}")
        pools[variant] = pool_of(trainers[variant, "sagr"], args.iters + args.warmup)
    for variant, pool in pools.items():  # the first CPU steps are several times slower (allocator, kernels)
        for batch in pool[:args.warmup]:
            for mode in MODES:
                step(trainers[variant, mode], batch)
    for batch in pools["frozen"][args.warmup:]:  # the timed batches' frames enter the cache
        step(trainers["frozen", "sagr"], batch)
    times = {key: [] for key in trainers}
    spent = {v: [] for v in pools}
    cpu_clock = trainers["naive", "sagr"].accelerator.device.type == "cpu" and torch.get_num_threads() == 1
    for i in range(args.warmup, args.warmup + args.iters):
        for variant in pools:
            for mode in MODES if i % 2 else MODES[::-1]:  # alternate which mode goes first
                wall, s = step(trainers[variant, mode], pools[variant][i])
                times[variant, mode].append(s["cpu_s"] if cpu_clock else wall)
                if mode == "sagr":
                    spent[variant].append({**s, "tk_share": s["tk"] / wall})
    results = {}
    for variant, pool in pools.items():
        med = {mode: statistics.median(times[variant, mode]) for mode in MODES}
        # the ratio of each batch's adjacent pair of steps, then the median: load drift cancels
        paired = statistics.median(a / b for a, b in zip(times[variant, "sagr"], times[variant, "fm_only"], strict=True))
        mem = {mode: memory(trainers[variant, mode], pool[-1]) for mode in MODES}
        mean = {k: statistics.mean(s[k] for s in spent[variant]) for k in (*SOURCES, "tk_share")}
        valid = statistics.mean(float(b.valid_tk.mean()) for b in pool[args.warmup:])
        results[variant] = {"ms": med, "ratio": paired, "mem": mem, "valid": valid, **mean,
                            "clock": "CPU time" if cpu_clock else "wall time"}
    return results


def report(name: str, results: dict, args, device) -> None:
    clock = next(iter(results.values()))["clock"]
    print(f"\n[{name}] batch {args.batch_size}, {args.iters} steps per trainer, device {device}, "
          f"threads {torch.get_num_threads()} ({clock}), optimized chain_length {args.chain_length}")
    kind = "saved act" if device.type != "cuda" else "peak mem"
    for variant, r in results.items():
        ms, mem = r["ms"], r["mem"]
        print(f"  {variant:9s} fm-only {ms['fm_only'] * 1e3:7.1f} ms  SA-GR {ms['sagr'] * 1e3:7.1f} ms  "
              f"ratio {r['ratio']:.3f}x   t+k from: pass {r['perf/target_pass_ratio']:.0%} "
              f"reuse {r['perf/target_reuse_ratio']:.0%} cache {r['perf/target_cache_ratio']:.0%} "
              f"(valid {r['valid']:.0%})   t+k pass {r['tk_share']:.1%} of the step   "
              f"{kind} {mem['sagr'] / max(mem['fm_only'], 1):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chain-length", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sagr_bench_"))
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; use {sorted(CONFIGS)}")
        results = run_config(name, args, tmp)
        report(name, results, args, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


if __name__ == "__main__":
    main()
