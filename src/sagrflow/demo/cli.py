"""`sagrflow demo`: generate demonstrations, train the tiny default with SA-GR, evaluate, report."""

from __future__ import annotations

import argparse

from sagrflow.demo.run import ABLATIONS


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="one run: sim demonstrations -> SA-GR training -> closed-loop eval -> report")
    demo.add_argument("--ablate", choices=ABLATIONS, default=None,
                      help="fm_only: the plain flow-matching baseline; no_drift: SA-GR with drift_eta 0 "
                           "(each number joins the other variants' reports)")
    demo.add_argument("--suite", default=None, help="sim family or all (default: goal)")
    demo.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default: 2000)")
    demo.add_argument("--demo-episodes", type=int, default=None, help="expert episodes per family (default: 2000)")
    demo.add_argument("--batch-size", type=int, default=None, help="training batch (default: 16)")
    demo.add_argument("--eval-episodes", type=int, default=None, help="evaluation episodes per task (default: 25)")
    demo.add_argument("--out", default=None, help="run directory (default: runs/demo/<time>_<sagr|fm_only|no_drift>)")
    demo.add_argument("--data-dir", default=None, help="demonstration cache (default: ~/.cache/sagrflow/demo_data)")
    demo.add_argument("--quick", action="store_true", help="a few steps and episodes: checks every stage (CI)")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from sagrflow.demo.run import DemoConfig, quick, run_demo

    cfg = DemoConfig(ablate=args.ablate)
    if args.quick:
        cfg = quick(cfg)
    given = {"suite": args.suite, "train_steps": args.train_steps, "eval_episodes": args.eval_episodes,
             "data_dir": args.data_dir, "demo_episodes": args.demo_episodes, "batch_size": args.batch_size}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    out = args.out or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}_{cfg.variant}"
    summary = run_demo(cfg, out)
    print(f"\n{cfg.variant}: " + ", ".join(f"{k} {100 * v['success_rate']:.1f}%" for k, v in summary["results"].items()))
    print(f"report: {out}/report.md  ({summary['timings']['total_s']:.0f} s)")
    return 0
