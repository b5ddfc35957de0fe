"""Evaluation throughput: is parallelism worth it on this machine?

    python benchmarks/eval.py [--episodes 4] [--checkpoint DIR]

Prints episodes/s of the scripted expert on the whole sim suite run sequentially and
with 2 worker processes, and of an SA-GR checkpoint (a tiny random one when none is
given) with 1 and 8 episodes stepped in lockstep (one batched policy call).
"""

from __future__ import annotations

import argparse
import tempfile

from sagrflow.eval.harness import RolloutConfig, evaluate
from sagrflow.eval.policies import PolicySpec, load_sagr
from sagrflow.eval.suites import SimSuite


def tiny_checkpoint(root: str) -> str:
    import torch

    from sagrflow.model.config import FrameworkConfig
    from sagrflow.model.policy import SAGRPolicy
    from sagrflow.model.tiny import make_tiny

    backbone = make_tiny("qwen2_5_vl", f"{root}/backbone")
    cfg = FrameworkConfig.from_dict({"backbone": {"path": str(backbone), "image_size": [56, 56]},
                                     "action_model": {"state_dim": 8, "dit_width": 64, "num_task_tokens": 4}})
    torch.manual_seed(0)
    return str(SAGRPolicy.from_config(cfg).save(f"{root}/policy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="per task")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    suite = SimSuite("all", image_size=64)
    for workers in (1, 2):
        results, s = evaluate(PolicySpec("expert"), suite, args.episodes, RolloutConfig(), workers=workers)
        print(f"expert, {workers} worker(s): {len(results) / s:6.1f} episodes/s ({len(results)} in {s:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_sagr(args.checkpoint or tiny_checkpoint(tmp))
        cfg = dict(max_steps=48, execute_steps=4)
        for num_envs in (1, 8):
            results, s = evaluate(None, suite, 1, RolloutConfig(num_envs=num_envs, **cfg), policy=policy)
            steps = sum(r.steps for r in results)
            print(f"sagr, {num_envs} env(s) in lockstep: {steps / s:6.1f} env steps/s ({len(results)} episodes "
                  f"of {cfg['max_steps']} steps in {s:.1f} s)")


if __name__ == "__main__":
    main()
