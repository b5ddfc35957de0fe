"""What an SA-GR training step adds to an fm-only one, counted instead of timed.

Two counts per step (forward and backward, no optimizer), fm-only beside each SA-GR mode:
  FLOPs  matmuls, convolutions and attention (torch's FlopCounterMode): what sets the step
         where the GPU is the bottleneck, as with real 3B VLMs
  ops    ATen operators that compute (views excluded), each one kernel launch or more on a
         GPU: what sets the step where the host issuing them is the bottleneck, as with the
         mid config (89M) on an H200, whose GPU is busy under a quarter of the step
Both are exact and the same on any machine: the step runs on PyTorch's meta device (shapes
only, no data), with the VLM built from its config alone, so the large config costs about 4 s
a count and under 2 GB. The step runs in float32: the casts that bf16 autocast adds on a GPU are not
counted. Timings belong to gpu_check.py; these counts say what the timings can become.

Modes: fm_only; sagr at each chain length L (datasets.vla_data.chain_length; L = 1 is the
naive step, every valid pair through the target pass), with target_pass separate and fused; with
`--graphed world,drift` also fused with those modules replayed as CUDA graphs (compile_world "graphs"):
each call of one counts one operator each way in place of its own, a lower bound (a replay also
copies its inputs into the graph's buffers, and gradients summed where an input is used twice are
added outside it).

    python benchmarks/step_cost.py [--configs tiny,mid,large] [--batch-size 64] [--chains 1,2,4,8] [--graphed world,drift]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import CONFIGS, fake_batch, framework_config  # noqa: E402
from sagrflow.model.backbone import VLMBackbone  # noqa: E402
from sagrflow.model.losses import reduce_losses  # noqa: E402
from sagrflow.model.policy import COMPILABLE, SAGRPolicy  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts, per phase ("forward", then "backward" once the caller sets `phase`), the ATen
    operators dispatched inside it that compute on the device (meta) tensors: views launch
    nothing, nor does host-side tensor work (token ids, positions). Attention counts one operator
    each way, as CUDA's fused kernels run it; on the meta device torch would run its math
    decomposition (two matmuls, a softmax, scalings) instead."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, Counter[str]] = {"forward": Counter(), "backward": Counter()}
        self.phase = "forward"
        self.paused = False
        self.in_graph = False  # inside a graphed module's forward
        self.graph_nodes: set = set()  # the autograd nodes of graphed modules: their backward is the graph's

    def count(self, name: str) -> None:
        if name != GRAPH_REPLAY and (self.in_graph or self.phase == "backward"
                                     and torch._C._current_autograd_node() in self.graph_nodes):
            return
        self.ops[self.phase][name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused and not func.is_view and func is not torch.ops.aten._unsafe_view.default and any(
                t.is_meta for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)):
            self.count(str(func.overloadpacket))
        return out

    def __enter__(self):
        self._sdpa = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = partial(_FusedAttention.run, self, self._sdpa)
        return super().__enter__()

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._sdpa
        return super().__exit__(*exc)


GRAPH_REPLAY = "cuda_graph_replay"


@contextmanager
def graphed(modules: list[torch.nn.Module], counter: OpCounter):
    """Counts each call of `modules` as one CUDA-graph replay each way, in place of its operators.
    Yields a function to call between forward and backward: it marks the calls' autograd nodes (those
    reachable from a call's output but not from its inputs), whose backward is the graph's."""
    calls = []

    def enter(module, args, kwargs):
        counter.count(GRAPH_REPLAY)
        counter.in_graph = True

    def leave(module, args, kwargs, out):
        counter.in_graph = False
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{type(module).__name__} returns {type(out).__name__}: `graphed` counts one tensor out")
        inputs = [t.grad_fn for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        calls.append((out.grad_fn, inputs))

    def mark() -> None:
        for out, inputs in calls:
            if out is not None:
                counter.graph_nodes |= _reachable([out]) - _reachable(inputs)
                counter.ops["backward"][GRAPH_REPLAY] += 1

    hooks = [h for m in modules for h in (m.register_forward_pre_hook(enter, with_kwargs=True),
                                          m.register_forward_hook(leave, with_kwargs=True, always_call=True))]
    try:
        yield mark
    finally:
        for h in hooks:
            h.remove()


def _reachable(nodes: list) -> set:
    seen, stack = set(), [n for n in nodes if n is not None]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions if n is not None)
    return seen


class _FusedAttention(torch.autograd.Function):
    """Attention as one counted operator each way; the uncounted math inside keeps the shapes."""

    @staticmethod
    def run(counter: OpCounter, sdpa, q, k, v, *args, **kwargs):
        return _FusedAttention.apply(counter, partial(sdpa, *args, **kwargs), q, k, v)

    @staticmethod
    def forward(ctx, counter, attend, q, k, v):
        counter.count("aten.scaled_dot_product_attention")
        counter.paused = True
        try:
            with torch.enable_grad():  # the math's own graph, for backward (no recomputation)
                ctx.inputs = [t.detach().requires_grad_() for t in (q, k, v)]
                ctx.out = attend(*ctx.inputs)
        finally:
            counter.paused = False
        ctx.counter = counter
        return ctx.out.detach()

    @staticmethod
    def backward(ctx, grad):
        counter = ctx.counter
        counter.count("aten.scaled_dot_product_attention_backward")
        counter.paused = True
        try:
            grads = torch.autograd.grad(ctx.out, ctx.inputs, grad)
        finally:
            counter.paused = False
        return None, None, *grads


def build_shapes(name: str, root: Path) -> SAGRPolicy:
    """The named config's policy on the meta device: its architecture, no weights."""
    cfg = framework_config(name, root, weights=False)
    return SAGRPolicy(cfg, VLMBackbone.from_config_dir(cfg.backbone.path)).to("meta")


def count_step(policy: SAGRPolicy, batch_size: int, fm_only: bool, chain: int, target_pass: str,
               graphs: tuple[str, ...] = ()) -> dict:
    """FLOPs and ops of one forward and backward in steady state, and the ops of each alone.
    `graphs`: names of SAGRPolicy.compilable() counted as CUDA-graph replays (`graphed`)."""
    policy.config.action_model.target_pass = target_pass
    host = fake_batch(batch_size, "cpu", chain)
    plan = None if fm_only else policy.plan_targets(host)  # as the trainer makes it, before the move
    batch = host.to("meta")
    # warm-up: the backbone remembers its host inputs per prompt and image grid after the first step
    reduce_losses(policy(batch, fm_only=fm_only, plan=plan), policy.config.action_model.loss_weights)[0].backward()
    policy.zero_grad(set_to_none=True)  # as a trainer step starts: no gradient to accumulate into
    counter = OpCounter()
    modules = [policy.compilable()[name] for name in graphs]
    with FlopCounterMode(display=False) as flops, counter, graphed(modules, counter) as mark_graphs:
        out = policy(batch, fm_only=fm_only, plan=plan)
        total, _ = reduce_losses(out, policy.config.action_model.loss_weights)
        mark_graphs()
        counter.phase = "backward"
        total.backward()
    policy.zero_grad(set_to_none=True)
    fwd, bwd = (sum(counter.ops[phase].values()) for phase in ("forward", "backward"))
    return {"flops": flops.get_total_flops(), "ops": fwd + bwd, "ops_fwd": fwd, "ops_bwd": bwd,
            "by_op": {phase: dict(c) for phase, c in counter.ops.items()}}


def run_config(name: str, root: Path, batch_size: int, chains: list[int], graphs: tuple[str, ...] = ()) -> list[dict]:
    policy = build_shapes(name, root)
    params = sum(p.numel() for p in policy.parameters()) / 1e6
    print(f"\n[{name}] {params:.1f}M parameters, batch {batch_size}: per step, forward + backward")
    print(f"  {'mode':28s} {'TFLOP':>8s} {'x fm':>6s} {'ops':>6s} {'fwd':>6s} {'bwd':>6s} {'x fm':>6s}")
    base = count_step(policy, batch_size, True, 1, "separate")
    rows = [{"config": name, "mode": "fm_only", "chain": 1, **base}]
    for chain in chains:
        for target_pass in ("separate", "fused"):
            rows.append({"config": name, "mode": f"sagr_{target_pass}", "chain": chain,
                         **count_step(policy, batch_size, False, chain, target_pass)})
        if graphs:
            rows.append({"config": name, "mode": "sagr_fused_graphed", "chain": chain,
                         **count_step(policy, batch_size, False, chain, "fused", graphs)})
    for r in rows:
        r["flops_ratio"], r["ops_ratio"] = r["flops"] / base["flops"], r["ops"] / base["ops"]
        label = r["mode"] if r["mode"] == "fm_only" else f"{r['mode']} chain {r['chain']}"
        print(f"  {label:28s} {r['flops'] / 1e12:8.3f} {r['flops_ratio']:5.3f}x {r['ops']:6d} {r['ops_fwd']:6d} "
              f"{r['ops_bwd']:6d} {r['ops_ratio']:5.3f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid,large", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chains", default="1,2,4,8", help="chain lengths; each must divide the batch")
    parser.add_argument("--graphed", default="", help=f"comma-separated, of {list(COMPILABLE)}: a fused mode with "
                        "them as CUDA graphs (world,drift: compile_world 'graphs')")
    args = parser.parse_args()
    graphs = tuple(dict.fromkeys(g for g in args.graphed.split(",") if g))
    if set(graphs) - set(COMPILABLE):
        parser.error(f"--graphed {args.graphed}: use names of {list(COMPILABLE)}")
    names, chains = args.configs.split(","), [int(c) for c in args.chains.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; use {sorted(CONFIGS)}")
    if any(c < 1 or args.batch_size % c for c in chains):
        parser.error(f"--chains {args.chains}: each must be >= 1 and divide the batch of {args.batch_size}")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = Path(tempfile.mkdtemp(prefix="sagrflow-step-cost-"))
    for name in names:
        run_config(name, root, args.batch_size, chains, graphs)


if __name__ == "__main__":
    main()
