"""Trainer step cost: plain flow matching (fm-only) against full SA-GR, on the tiny config.

Both trainers are the real `Trainer` (optimizer, clipping, reduction, metrics bookkeeping)
on the same pre-loaded batches of a synthetic sim_all mix, so data loading is left out.
Steps alternate between the modes and the medians are compared, so drift in machine load
hits both alike. It prints, measured side by side in one run:
  steps/s of each mode and their ratio (SA-GR / fm-only)
  peak memory of each mode and their ratio: on CUDA the max allocated during the steps;
  on CPU the bytes autograd keeps for backward (distinct storages, allocator-free)
  the share of the SA-GR step spent in the t+k VLM pass (and in the t pass, for scale)

    python benchmarks/train_step.py [--iters 10] [--batch-size 8] [--data-root-dir DIR]

The numbers are a machine's, not a contract: timed assertions never go in tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sagrflow.data.synthetic import write_synthetic
from sagrflow.train.config import load_config
from sagrflow.train.trainer import Trainer

MODES = ("fm_only", "sagr")


def make_trainer(fm_only: bool, data_root: Path, out: Path, batch_size: int) -> Trainer:
    cfg = load_config(None, {
        "datasets.vla_data.data_root_dir": str(data_root), "datasets.vla_data.num_workers": 0,
        "datasets.vla_data.per_device_batch_size": batch_size, "trainer.fm_only": fm_only,
        "trainer.output_dir": str(out), "trainer.run_name": "fm_only" if fm_only else "sagr",
        "trainer.logger": "none", "trainer.resume": "never", "trainer.save_interval": 0,
        "trainer.max_train_steps": 10_000, "trainer.sagr_phase_a_steps": 0, "trainer.sagr_phase_b_ramp_steps": 0,
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
    cuda = trainer.accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train_step([batch])
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, trainer.timer.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-root-dir", default=None, help="a folder holding sim_* datasets (default: synthetic)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sagr_bench_"))
    root = Path(args.data_root_dir) if args.data_root_dir else tmp / "data"
    if not args.data_root_dir:
        for i, name in enumerate(("sim_spatial", "sim_object", "sim_goal", "sim_long")):
            write_synthetic(root / name, [40, 30, 20], seed=i, video_codec=None, image_size=(56, 56))
    trainers = {mode: make_trainer(mode == "fm_only", root, tmp / "runs", args.batch_size) for mode in MODES}
    cuda = trainers["sagr"].accelerator.device.type == "cuda"
    batches = iter(trainers["sagr"].loader)
    pool = [next(batches) for _ in range(args.iters + args.warmup)]
    for batch in pool[:args.warmup]:  # the first CPU steps are several times slower (allocator, kernels)
        for mode in MODES:
            step(trainers[mode], batch)
    pool = pool[args.warmup - 1:]
    times = {mode: [] for mode in MODES}
    passes: dict[str, list[float]] = {"t": [], "tk": []}
    for batch in pool[1:]:
        for mode in MODES:
            seconds, spent = step(trainers[mode], batch)
            times[mode].append(seconds)
            if mode == "sagr":
                passes["t"].append(spent["t"] / seconds)
                passes["tk"].append(spent["tk"] / seconds)
    memory = {}
    for mode in MODES:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(trainers[mode], pool[1])
            memory[mode] = torch.cuda.max_memory_allocated() - base
        else:
            memory[mode] = saved_bytes(trainers[mode], pool[1])
    med = {mode: statistics.median(v) for mode, v in times.items()}
    device = trainers["sagr"].accelerator.device
    valid = sum(float(b.valid_tk.mean()) for b in pool[1:]) / args.iters
    print(f"tiny config, batch {args.batch_size}, {args.iters} steps per mode, device {device}, "
          f"valid_tk ratio {valid:.2f}")
    kind = "peak allocated" if cuda else "saved for backward"
    for mode in MODES:
        print(f"  {mode:8s} {1 / med[mode]:7.2f} steps/s   {med[mode] * 1e3:8.1f} ms/step   "
              f"{memory[mode] / 2**20:8.1f} MiB {kind}")
    print(f"  ratio sagr/fm_only: steps/s {med['fm_only'] / med['sagr']:.2f}x, memory "
          f"{memory['sagr'] / max(memory['fm_only'], 1):.2f}x")
    print(f"  share of the SA-GR step: t+k VLM pass {statistics.median(passes['tk']):.1%}, "
          f"t VLM pass {statistics.median(passes['t']):.1%}")


if __name__ == "__main__":
    main()
