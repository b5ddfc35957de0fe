"""Simulator throughput: env steps/s with both cameras rendered, and demo generation time.

    python benchmarks/sim.py [--steps 5000] [--image-size 128] [--generate 50] [--expert-seeds 100]

Steps run single-threaded with random actions (resets included), so steps per CPU-second
is the per-core rate. Each line also prints the ratio to the issue's targets, measured in
this run: 1,000 steps/s per core with both 128x128 cameras, 200 demo episodes in 120 s,
and the scripted expert's success rate per task against the 95% bar.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from sagrflow.sim import SimConfig, SimEnv, run_expert, task_names

TARGET_STEPS_PER_CORE = 1000.0
TARGET_GENERATE_S = 120.0
TARGET_EXPERT_SUCCESS = 0.95


def steps_per_second(config: SimConfig, steps: int, seed: int = 0) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second) over all tasks in turn, random actions."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    envs = [SimEnv(name, config) for name in task_names()]
    env = envs[0]
    env.reset(seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    for i, action in enumerate(actions):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated or i % 100 == 99:  # visit every task, resets included
            env = envs[(i // 100 + 1) % len(envs)]
            env.reset(seed=i)
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--generate", type=int, default=50, help="episodes per family to time (0: skip)")
    parser.add_argument("--expert-seeds", type=int, default=100, help="seeds per task for the expert (0: skip)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1], help="expert noise levels")
    args = parser.parse_args()

    print(f"env steps ({args.steps} random-action steps over all tasks, image {args.image_size}):")
    for label, config in (
        ("both cameras", SimConfig(image_size=args.image_size)),
        ("both cameras + depth", SimConfig(image_size=args.image_size, depth=True)),
        ("no rendering", SimConfig(render=False)),
    ):
        wall, per_core = steps_per_second(config, args.steps)
        print(f"  {label:22s} {wall:8.0f} steps/s   {per_core:8.0f} steps/s per core   "
              f"ratio to {TARGET_STEPS_PER_CORE:.0f}/core target: {per_core / TARGET_STEPS_PER_CORE:.2f}x")

    if args.generate:
        from sagrflow.sim.generate import GenerateConfig, generate

        n = 4 * args.generate
        with tempfile.TemporaryDirectory(prefix="sagrflow-sim-bench-") as out:
            start = time.perf_counter()
            generate("all", out, GenerateConfig(episodes=args.generate, image_size=args.image_size),
                     show_progress=False)
            seconds = time.perf_counter() - start
        print(f"generate --suite all: {n} episodes (h264, v2.1) in {seconds:.1f} s, {n / seconds:.1f} episodes/s   "
              f"target {TARGET_GENERATE_S:.0f} s for 200 / measured (scaled to 200): "
              f"{TARGET_GENERATE_S / (seconds * 200 / n):.2f}x")

    if args.expert_seeds:
        print(f"expert success over seeds 0..{args.expert_seeds - 1} (ratio to the {TARGET_EXPERT_SUCCESS:.0%} bar):")
        for name in task_names():
            env = SimEnv(name, render=False)
            cells = []
            for noise in args.noise:
                results = [run_expert(env, seed, noise) for seed in range(args.expert_seeds)]
                rate = float(np.mean([ok for ok, _ in results]))
                steps = float(np.mean([n for _, n in results]))
                cells.append(f"noise {noise:.2f}: {rate:6.1%} ({rate / TARGET_EXPERT_SUCCESS:.2f}x) {steps:5.1f} steps")
            print(f"  {name:34s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
