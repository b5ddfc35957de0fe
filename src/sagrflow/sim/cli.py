"""`sagrflow sim ...`: list the tasks, generate demonstrations, watch the expert."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="built-in simulated tabletop suite: tasks, demonstrations, videos")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="ACTION", required=True)

    show = sim_sub.add_parser("list", help="print the task families, task names and instructions")
    show.set_defaults(func=_list)

    gen = sim_sub.add_parser("generate", help="write expert demonstrations as LeRobot datasets (DIR/sim_<family>)")
    gen.add_argument("--suite", default="all", help="all | spatial | object | goal | long (default: all)")
    gen.add_argument("--episodes", type=int, default=50, help="episodes per family (default: 50, 200 in all)")
    gen.add_argument("--out", required=True, help="folder that receives one dataset per family")
    gen.add_argument("--format", default="v2.1", help="LeRobot version: v2.1 | v3.0 (default: v2.1)")
    gen.add_argument("--codec", default="h264", help="h264 | av1 | none (PNG in parquet) (default: h264)")
    gen.add_argument("--image-size", type=int, default=128, help="square camera side in pixels (default: 128)")
    gen.add_argument("--noise", type=float, default=0.1, help="expert action noise std (default: 0.1)")
    gen.add_argument("--seed", type=int, default=0, help="first initial-state seed (default: 0)")
    gen.add_argument("--overwrite", action="store_true", help="replace datasets already in --out")
    gen.set_defaults(func=_generate)

    play = sim_sub.add_parser("play", help="film the scripted expert on tasks to an mp4")
    which = play.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="one task name (see `sagrflow sim list`)")
    which.add_argument("--suite", help="all | spatial | object | goal | long: every task of it")
    play.add_argument("--out", default=None, help="mp4 path (default: runs/sim_play/<task or suite>.mp4)")
    play.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    play.add_argument("--episodes", type=int, default=1, help="episodes per task (default: 1)")
    play.add_argument("--noise", type=float, default=0.0, help="expert action noise std (default: 0)")
    play.add_argument("--image-size", type=int, default=128, help="camera side in pixels (default: 128)")
    play.add_argument("--scale", type=int, default=3, help="upscaling of the video (default: 3)")
    play.set_defaults(func=_play)


def _list(args: argparse.Namespace) -> int:
    from sagrflow.sim.tasks import FAMILIES, TASKS, task_names

    for family in FAMILIES:
        print(f"{family}:")
        for name in task_names(family):
            print(f"  {name:34s} {TASKS[name].instruction}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sagrflow.sim.generate import GenerateConfig, generate

    cfg = GenerateConfig(episodes=args.episodes, image_size=args.image_size, version=args.format,
                         codec=args.codec, noise=args.noise, seed=args.seed)
    for root in generate(args.suite, args.out, cfg, overwrite=args.overwrite):
        print(root)
    return 0


def _play(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sagrflow.sim.play import play_expert
    from sagrflow.sim.tasks import get_task, task_names

    tasks = [get_task(args.task).name] if args.task else task_names(args.suite)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    out = args.out or Path("runs/sim_play") / f"{(args.task or args.suite).replace('/', '_')}.mp4"
    seeds = list(range(args.seed, args.seed + args.episodes))
    results = play_expert(tasks, out, seeds, noise=args.noise, image_size=args.image_size, scale=args.scale)
    for name, seed, success in results:
        print(f"{name:34s} seed {seed:<6d} {'success' if success else 'FAILURE'}")
    print(f"video: {out}")
    return 0
