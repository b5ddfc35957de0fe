"""Policy step cost: plain flow matching against full SA-GR, and Euler steps at inference.

Two random-weight configs, both built offline through the real checkpoint path:
  tiny  the embedded default (tiny Qwen2.5-VL, framework defaults)
  mid   a Qwen2.5-VL language model of 8 layers, width 512, and a DiT of width 512

For each it prints, measured side by side in one run (modes alternate, medians):
  forward+backward time and peak memory, fm-only vs full SA-GR, and their ratio
  predict_action time with 10 Euler steps vs 1, and their ratio
Peak memory is the GPU's max allocated on CUDA; on CPU the RSS high-water-mark growth of
a fresh subprocess per mode (the allocator makes it coarse). "saved act" is the bytes
autograd keeps for backward, counted exactly whatever the allocator.

    python benchmarks/model_step.py [--configs tiny,mid] [--batch-size 4] [--iters 10] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sagrflow.core import batch as keys
from sagrflow.core.batch import Batch
from sagrflow.data.collate import tk_index
from sagrflow.model.config import FrameworkConfig
from sagrflow.model.losses import reduce_losses
from sagrflow.model.policy import SAGRPolicy
from sagrflow.model.tiny import make_tiny

CONFIGS = {
    "tiny": {"llm": (64, 4), "action_model": {}},
    "mid": {"llm": (512, 8), "action_model": {"dit_width": 512, "dit_heads": 8}},
    # Qwen2.5-VL-3B's shapes (its vision tower, 12 of its 36 LLM layers), about 1.9B parameters: GPU only
    "large": {"llm": (2048, 12), "preset": "qwen2_5_vl_3b", "action_model": {"dit_width": 1024, "dit_heads": 16}},
}
H, A, S, CAMS, SIDE, K = 8, 7, 8, 2, 224, 7


def framework_config(name: str, root: Path, weights: bool = True, **action_model) -> FrameworkConfig:
    """The named config, its VLM written under `root` on first use (`weights=False`: the architecture
    only, see make_tiny); `action_model` overrides keys."""
    hidden, layers = CONFIGS[name]["llm"]
    path = root / (name if weights else f"{name}-shapes")
    if not (path / "config.json").exists():
        make_tiny("qwen2_5_vl", path, hidden_size=hidden, num_layers=layers, preset=CONFIGS[name].get("preset"),
                  weights=weights)
    am = {"action_horizon": H, "action_dim": A, "state_dim": S, **CONFIGS[name]["action_model"], **action_model}
    return FrameworkConfig.from_dict({"backbone": {"path": str(path)}, "action_model": am})


def build(name: str, root: Path, device: str, **action_model) -> SAGRPolicy:
    """The named config's policy (seeded: the same weights every call); `action_model` overrides keys."""
    cfg = framework_config(name, root, **action_model)
    torch.manual_seed(0)
    return SAGRPolicy.from_config(cfg).to(device)


def fake_batch(b: int, device: str, chain_length: int = 1) -> Batch:
    """Random LIBERO-shaped batch. `chain_length` L > 1 lays it out as the loader's chains do
    (datasets.vla_data.chain_length): L samples of one episode at t0, t0+k, ..., so a sample's
    t+k frame is the next one's t frame and collate's tk_index lets the policy reuse its tokens."""
    g = torch.Generator().manual_seed(0)
    image_t = torch.randint(0, 256, (b, CAMS, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    image_tk = torch.randint(0, 256, (b, CAMS, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    member = torch.arange(b) % chain_length
    follows = torch.nonzero(member[:-1] < chain_length - 1).flatten()  # samples whose next one is at their t+k
    image_tk[follows] = image_t[follows + 1]
    episode, frame = torch.arange(b) // chain_length, member * K
    samples = [{keys.EPISODE_INDEX: int(e), keys.FRAME_INDEX: int(f), keys.TEMPORAL_DELTA_K: K, keys.VALID_TK: 1.0}
               for e, f in zip(episode, frame, strict=True)]
    return Batch(
        image_t=image_t, image_tk=image_tk,
        valid_tk=torch.ones(b), action=torch.randn(b, H, A, generator=g), action_mask=torch.ones(b, H),
        temporal_delta_k=torch.full((b,), K), dataset_index=torch.zeros(b, dtype=torch.long),
        episode_index=episode, frame_index=frame,
        lang=tuple(["pick up the black bowl and place it on the plate"] * b),
        state_t=torch.randn(b, S, generator=g), state_tk=torch.randn(b, S, generator=g),
        tk_index=tk_index(samples),
    ).to(device)


def train_step(policy: SAGRPolicy, batch: Batch, fm_only: bool, optimizer: torch.optim.Optimizer | None = None,
               dtype: torch.dtype | None = None, host: Batch | None = None) -> None:
    """Forward and backward (autocast to `dtype` when given, as the trainer does), then the optimizer step if any.
    `host`: the batch's host copy, from which the t+k plan is made, as the trainer does (else the forward
    reads the device batch back)."""
    plan = None if fm_only or host is None else policy.plan_targets(host)
    with torch.autocast(batch.action.device.type, dtype=dtype, enabled=dtype is not None):
        out = policy(batch, fm_only=fm_only, plan=plan)
        total, _ = reduce_losses(out, policy.config.action_model.loss_weights)
    total.backward()
    if optimizer is not None:
        optimizer.step()
    policy.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(fns: dict, iters: int, device: str) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved so drift in machine load hits all alike."""
    return {k: statistics.median(v) for k, v in alternate_runs(fns, iters, device).items()}


def alternate_runs(fns: dict, iters: int, device: str) -> dict[str, list[float]]:
    """Seconds of each call of each fn, `iters` rounds of one call of each: a round's times share the
    machine's load of that moment, so a ratio within a round sheds most of its drift. Each round runs
    the fns in an order of its own (seeded shuffle), so what a call leaves behind (in caches, the
    allocator, the GPU's clocks) does not fall on the same fn every round."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    keys, order = list(fns), random.Random(0)
    for _ in range(iters):
        order.shuffle(keys)
        for k in keys:
            times[k].append(timed(fns[k], device))
    return times


def saved_bytes(policy: SAGRPolicy, batch: Batch, fm_only: bool) -> int:
    """Bytes of the activations autograd keeps for backward in one step (distinct storages): allocator-free."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in policy.parameters()}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # weights are kept anyway; count activations only
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step(policy, batch, fm_only)
    return sum(storages.values())


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def peak_memory(name: str, root: Path, b: int, fm_only: bool, device: str) -> dict[str, float]:
    """Peak growth during 3 train steps, and the bytes saved for backward."""
    if device.startswith("cuda"):
        policy, batch = build(name, root, device), fake_batch(b, device)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            train_step(policy, batch, fm_only)
        return {"peak": float(torch.cuda.max_memory_allocated() - base), "saved": saved_bytes(policy, batch, fm_only)}
    cmd = [sys.executable, __file__, "--probe", name, str(root), str(b), str(int(fm_only)), str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def probe(name: str, root: str, b: int, fm_only: bool) -> None:
    """CPU: a fresh process per mode; the RSS high-water mark is reset (Linux clear_refs 5) after building."""
    policy, batch = build(name, Path(root), "cpu"), fake_batch(b, "cpu")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _hwm_bytes()
    for _ in range(3):
        train_step(policy, batch, fm_only)
    print(json.dumps({"peak": max(_hwm_bytes() - before, 0), "saved": saved_bytes(policy, batch, fm_only)}))


def run_config(name: str, root: Path, args) -> None:
    policy, batch = build(name, root, args.device), fake_batch(args.batch_size, args.device)
    n_vlm = sum(p.numel() for p in policy.backbone.parameters())
    n_all = sum(p.numel() for p in policy.parameters())
    print(f"\n[{name}] VLM {n_vlm / 1e6:.2f}M params, policy {n_all / 1e6:.2f}M, batch {args.batch_size}, "
          f"R={policy.config.action_model.repeated_diffusion_steps}, device {args.device}")
    t = alternate({"fm": lambda: train_step(policy, batch, True), "sagr": lambda: train_step(policy, batch, False)},
                  args.iters, args.device)
    mem = {m: peak_memory(name, root, args.batch_size, m == "fm", args.device) for m in ("fm", "sagr")}
    print(f"  fwd+bwd   fm-only {t['fm'] * 1e3:8.1f} ms   full SA-GR {t['sagr'] * 1e3:8.1f} ms   "
          f"ratio {t['sagr'] / t['fm']:.2f}x")
    for key, label in (("peak", "peak mem "), ("saved", "saved act")):
        fm, sagr = mem["fm"][key], mem["sagr"][key]
        print(f"  {label} fm-only {fm / 2**20:8.1f} MiB  full SA-GR {sagr / 2**20:8.1f} MiB  "
              f"ratio {sagr / max(fm, 1):.2f}x")
    policy.eval()
    rng = np.random.default_rng(0)
    obs = [{"image": [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(CAMS)],
            "lang": "pick up the black bowl", "state": np.zeros(S)}]
    p = alternate({1: lambda: policy.predict_action(obs, num_steps=1),
                   10: lambda: policy.predict_action(obs, num_steps=10)}, args.iters, args.device)
    print(f"  predict_action  N=1 {p[1] * 1e3:8.1f} ms   N=10 {p[10] * 1e3:8.1f} ms   ratio {p[10] / p[1]:.2f}x")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        name, root, b, fm_only, threads = sys.argv[2:7]
        torch.set_num_threads(int(threads))
        probe(name, root, int(b), bool(int(fm_only)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", type=Path, default=None, help="where to write the random models (default: temp)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root or Path(tempfile.mkdtemp(prefix="sagrflow-bench-model-"))
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; use {sorted(CONFIGS)}")
        run_config(name, root, args)


if __name__ == "__main__":
    main()
