"""Does a trained policy's world model see time? Temporal change of its features and task tokens.

For each policy, on the same (t, t+k) pairs of the demo's demonstrations (`sagrflow demo` caches
them), without gradients:
  vlm change/spread    the mean squared t -> t+k change of the VLM's last layer pooled over the visual
                       tokens, over its variance across the samples: how much the scene moves in k steps
  token change/spread  the same for the task tokens (the anchor's output, what the world model predicts)
  token change         debug/world/token_change: the loss_dyn of predicting that the tokens do not change
  world error          loss_dyn: the world predictor's pred_next against the t+k tokens (teacher actions)
  error/change         world error over token change per pair (median): >= 1, no better than "no change"
  drift gain, same     the training forward's loss_fm with the drift off over with it on, minus 1 (same
                       noise and time), the drift reading each sample's own t -> t+k residual: what it
                       earns in training under drift_residual "same" (DESIGN.md)
  drift gain, previous the same, the drift reading the residual of the interval before the chunk (the chain
                       predecessor's prediction against the sample's t tokens), as predict_action gives it:
                       what the drift can earn at inference. A "same" gain far above this one comes from
                       what inference does not have: the chunk's own expert actions and its own future
A token change/spread far below the VLM's says the task tokens became time-invariant: the world
losses are then met without modelling the dynamics. `--init` adds a fresh policy of a run's config.
The drift gains are measured on batches of chains of 4 (datasets.vla_data.chain_length), which
drift_residual "previous" needs, over the samples with a chain predecessor; the other columns on
independent draws.

    python benchmarks/world_probe.py runs/demo/<time>_sagr/train runs/demo/<time>_fm_only/train \\
        --init runs/demo/<time>_sagr/train/config.yaml
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from sagrflow.data.config import VlaDataConfig
from sagrflow.data.loader import TemporalLoader, build_dataset
from sagrflow.eval.policies import resolve_checkpoint
from sagrflow.model.config import FrameworkConfig
from sagrflow.model.policy import SAGRPolicy
from sagrflow.train.config import read_yaml

COLUMNS = ("vlm change/spread", "token change/spread", "token change", "world error", "error/change",
           "drift gain, same", "drift gain, previous")
CHAIN = 4


def _pooled_visual(enc) -> torch.Tensor:
    """(B, D): the last VLM layer averaged over each sample's visual tokens."""
    keep = enc.vlm.visual_mask.unsqueeze(-1).to(enc.vlm.last_hidden_state.dtype)
    return (enc.vlm.last_hidden_state * keep).sum(1) / keep.sum(1).clamp_min(1.0)


@torch.no_grad()
def probe(policy: SAGRPolicy, batches: list, chained: list) -> dict[str, float]:
    """Every column for one policy: the change and error columns on `batches` (independent draws), the
    drift gains on `chained` (chains of CHAIN)."""
    policy.eval()
    sums: dict[str, list[float]] = {k: [] for k in ("vlm_change", "vlm_spread", "change", "spread", "error")}
    ratios: list[float] = []
    for b in batches:
        valid = b.valid_tk > 0
        lang = list(b.lang)
        now, later = policy.encode(b.image_t, lang), policy.encode(b.image_tk, lang)
        tokens, target = now.task_tokens, later.task_tokens  # (B, K, W)
        # the loader's actions and states are normalized already, as training feeds them
        state = b.state_t.float() if policy.config.action_model.state_dim else None
        pred = policy.head.predict_next(tokens, b.action.float(), state, None)
        f_now, f_later = _pooled_visual(now), _pooled_visual(later)
        sums["vlm_change"].append(float((f_later - f_now)[valid].pow(2).mean()))
        sums["vlm_spread"].append(float(f_now.var(0).mean()))
        change = (target - tokens)[valid].pow(2).mean(dim=(1, 2))  # (n_valid,)
        error = (pred - target)[valid].pow(2).mean(dim=(1, 2))
        sums["change"].append(float(change.mean()))
        sums["spread"].append(float(tokens.var(0).mean()))
        sums["error"].append(float(error.mean()))
        ratios += (error / change.clamp_min(1e-12)).tolist()
    if not ratios:
        raise SystemExit("no batch held a valid (t, t+k) pair: probe more --batches")
    m = {k: statistics.fmean(v) for k, v in sums.items()}
    return dict(zip(COLUMNS, (m["vlm_change"] / m["vlm_spread"], m["change"] / m["spread"], m["change"], m["error"],
                              statistics.median(ratios), drift_gain(policy, chained, "same"),
                              drift_gain(policy, chained, "previous")), strict=True))


@torch.no_grad()
def drift_gain(policy: SAGRPolicy, batches: list, residual: str) -> float:
    """Mean training loss_fm with drift_eta 0 over with the policy's drift reading `residual` (a
    drift_residual mode), minus 1, on the same noise and time draws, over the samples that have a
    chain predecessor (the others have no residual under "previous", as an episode's first call)."""
    am, drift = policy.config.action_model, policy.head.drift
    eta, mode, fm = drift.eta, am.drift_residual, {}
    plans = [policy.plan_targets(b) for b in batches]  # one per batch, for both passes
    with_previous = [torch.tensor(plan.previous) >= 0 for plan in plans]  # (B,) each
    am.drift_residual = residual
    try:
        for off in (False, True):
            drift.eta = 0.0 if off else eta
            values = []
            for i, (b, plan, has) in enumerate(zip(batches, plans, with_previous, strict=True)):
                torch.manual_seed(100 + i)
                values.append(float(policy(b, plan=plan)["loss_fm"][has].mean()))
            fm[off] = statistics.fmean(values)
    finally:
        drift.eta, am.drift_residual = eta, mode
    return fm[True] / fm[False] - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policies", nargs="*", help="policy directories, trainer checkpoints (step_*) or run directories")
    ap.add_argument("--init", action="append", default=[], help="a run's config.yaml: a fresh policy of its config")
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache/sagrflow/demo_data/sim_128px_2000ep_seed0"))
    ap.add_argument("--data-mix", default="sim_goal")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if args.batch_size % CHAIN:
        ap.error(f"--batch-size must be a multiple of {CHAIN}: the drift gains are measured on chains of {CHAIN}")
    if not args.policies and not args.init:
        ap.error("name at least one policy or --init config")
    # eager: the probe's forwards change drift_residual and batch sizes, each a recompile of compiled modules
    policies = {str(p): SAGRPolicy.load(resolve_checkpoint(p), compile_world=False) for p in args.policies}
    for path in args.init:
        torch.manual_seed(0)
        framework = read_yaml(path)["framework"]
        framework.setdefault("action_model", {})["compile_world"] = False
        policies[f"init: {path}"] = SAGRPolicy.from_config(FrameworkConfig.from_dict(framework))
    for name, p in policies.items():  # what the probe feeds the world predictor: teacher actions, no geometry
        am = p.config.action_model
        if am.world_action_source != "teacher" or am.use_geometric_branch:
            raise SystemExit(f"{name}: the probe covers world_action_source teacher without the geometric branch")
    sizes = {(tuple(p.config.backbone.image_size), p.config.action_model.temporal_delta_k) for p in policies.values()}
    if len(sizes) > 1:
        raise SystemExit(f"the policies differ in (image size, k) {sorted(sizes, key=str)}: probe one at a time")
    size, k = sizes.pop()

    def draw(chain_length: int) -> list:
        cfg = VlaDataConfig(data_root_dir=args.data_dir, data_mix=args.data_mix, per_device_batch_size=args.batch_size,
                            num_workers=1, image_size=list(size), include_state=True, seed=1, temporal_delta_k=k,
                            chain_length=chain_length)
        loader = iter(TemporalLoader(build_dataset(cfg), cfg))
        return [next(loader) for _ in range(args.batches)]

    batches, chained = draw(1), draw(CHAIN)
    print(f"{args.batches} batches of {args.batch_size} (t, t+k) pairs, k = {k or 'the data default'}, from "
          f"{args.data_dir} ({args.data_mix}); the drift gains on as many in chains of {CHAIN}")
    print(" | ".join(COLUMNS) + " | policy")
    for name, policy in policies.items():
        row = probe(policy, batches, chained)
        print(" | ".join(f"{row[c]:.3g}".rjust(len(c)) for c in COLUMNS) + f" | {name}", flush=True)


if __name__ == "__main__":
    main()
