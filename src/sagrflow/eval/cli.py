"""`sagrflow eval` (closed-loop success rates) and `sagrflow serve` (websocket policy server)."""

from __future__ import annotations

import argparse

POLICIES = ("sagr", "expert", "random", "zero")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="closed-loop evaluation on the sim or LIBERO: success rates, CIs, videos")
    ev.add_argument("--checkpoint", help="policy directory, trainer checkpoint (step_*) or trainer run directory")
    ev.add_argument("--policy", choices=POLICIES, default=None,
                    help="sagr (the checkpoint, default) | expert | random | zero (baselines, no checkpoint)")
    ev.add_argument("--server", help="HOST:PORT of a running `sagrflow serve` to evaluate instead")
    ev.add_argument("--suite", default="all",
                    help="sim: all | spatial | object | goal | long; LIBERO: libero_spatial | libero_object | "
                         "libero_goal | libero_10 (default: all)")
    ev.add_argument("--episodes", type=int, default=None,
                    help="episodes per task (default: 10 on the sim, LIBERO's 50 init states on LIBERO)")
    ev.add_argument("--seed", type=int, default=None,
                    help="first episode seed (default: 100000 on the sim, init state 0 on LIBERO)")
    ev.add_argument("--execute-steps", type=int, default=None,
                    help="actions executed from each chunk before asking again (default: the whole chunk)")
    ev.add_argument("--check-every", type=int, default=None,
                    help="also ask mid-chunk every N steps and replan when the RRR signal fires (default: off)")
    ev.add_argument("--num-envs", type=int, default=8, help="episodes stepped in lockstep, one batched call (default: 8)")
    ev.add_argument("--workers", type=int, default=1,
                    help="processes splitting the tasks, each with its own policy and envs; pays off when the "
                         "simulator dominates (LIBERO renders on the CPU) and cores are free (default: 1)")
    ev.add_argument("--max-steps", type=int, default=None, help="override every task's step limit")
    ev.add_argument("--num-steps", type=int, default=None, help="Euler steps per chunk (default: the checkpoint's)")
    ev.add_argument("--image-size", type=int, default=None, help="camera size (default: 128 sim, 256 LIBERO)")
    ev.add_argument("--videos", type=int, default=3, help="tasks whose first episode is filmed (default: 3)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=None, help="run directory (default: runs/eval/<policy>_<suite>_<time>)")
    ev.set_defaults(func=_eval)

    sv = sub.add_parser("serve", help="serve a checkpoint over websocket + msgpack (openpi / starVLA clients)")
    sv.add_argument("--checkpoint", required=True,
                    help="policy directory, trainer checkpoint (step_*) or trainer run directory")
    sv.add_argument("--host", default="0.0.0.0")
    sv.add_argument("--port", type=int, default=10093)
    sv.add_argument("--device", default="cpu")
    sv.add_argument("--seed", type=int, default=0,
                    help="noise seed: each episode draws from its own generator, seeded by (seed, connection "
                         "number, episode id), so its chunks do not depend on the other examples of a request "
                         "(default: 0)")
    sv.add_argument("--client-steps", type=int, default=None,
                    help="actions the clients execute between requests (openpi's LIBERO example: 5), taken as "
                         "the 'elapsed' of requests that send none: the drift and RRR act only when it equals the "
                         "checkpoint's temporal_delta_k (default: such requests are taken to come k steps on)")
    sv.set_defaults(func=_serve)


def _eval(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sagrflow.eval.harness import RolloutConfig, evaluate
    from sagrflow.eval.policies import PolicySpec
    from sagrflow.eval.report import summarize, write_report
    from sagrflow.eval.suites import get_suite

    kind = args.policy or ("remote" if args.server else "sagr")
    if kind == "sagr" and not args.checkpoint:
        raise ValueError("give --checkpoint DIR, --server HOST:PORT, or a baseline --policy expert|random|zero")
    suite = get_suite(args.suite, args.image_size, args.seed)
    episodes = args.episodes or (50 if suite.name.startswith("libero") else 10)
    cfg = RolloutConfig(args.execute_steps, args.check_every, args.num_envs, args.max_steps)
    spec = None if kind == "remote" else PolicySpec(kind, args.checkpoint, args.device, args.num_steps)
    out = Path(args.out or f"runs/eval/{kind}_{suite.name}_{time.strftime('%Y%m%d-%H%M%S')}")
    policy, client = None, None
    if kind == "remote":
        from sagrflow.eval.client import PolicyClient, RemotePolicy

        host, _, port = args.server.rpartition(":")
        client = PolicyClient(host or "127.0.0.1", int(port))
        policy = RemotePolicy(client, num_steps=args.num_steps)

    _warn_if_no_residual(cfg, spec, client)

    def progress(r) -> None:
        print(f"{r.task:40s} seed {r.seed:<7d} {'success' if r.success else 'failure':8s} {r.steps:4d} steps"
              f"{f'  {r.replans} replans' if r.replans else ''}", flush=True)

    try:
        results, seconds = evaluate(spec, suite, episodes, cfg, out / "videos", args.videos, args.workers,
                                    policy=policy, progress=progress)
    finally:
        if client is not None:
            client.close()
    meta = {"policy": kind, "checkpoint": args.checkpoint or args.server or "", "suite": suite.name,
            "episodes_per_task": episodes, "execute_steps": cfg.execute_steps, "check_every": cfg.check_every,
            "num_envs": cfg.num_envs, "workers": args.workers, "seconds": round(seconds, 1)}
    summary = summarize(results, meta)
    json_path, md_path = write_report(summary, out)
    o = summary["overall"]
    print(f"\n{kind} on {suite.name}: {100 * o['success_rate']:.1f}% ({o['successes']}/{o['episodes']}), "
          f"95% CI {100 * o['ci95'][0]:.1f}-{100 * o['ci95'][1]:.1f}%, {seconds:.1f} s")
    print(f"report: {md_path}  {json_path}")
    return 0


def _warn_if_no_residual(cfg, spec, client) -> None:
    """Before a long evaluation: say (on stderr) when no call will come k steps after its chunk."""
    import json
    import sys

    from sagrflow.eval.harness import residual_note
    from sagrflow.eval.policies import resolve_checkpoint

    if client is not None:
        meta = client.metadata
        horizon, k = meta.get("action_horizon"), meta.get("temporal_delta_k")
    elif spec.kind == "sagr":
        from sagrflow.model.config import FrameworkConfig
        from sagrflow.model.policy import CONFIG_FILE

        path = resolve_checkpoint(spec.checkpoint) / CONFIG_FILE  # as SAGRPolicy.load reads it
        am = FrameworkConfig.from_dict(json.loads(path.read_text())).action_model
        horizon, k = am.action_horizon, am.temporal_delta_k
    else:
        return
    note = residual_note(cfg, horizon, k) if horizon else None
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from sagrflow.eval.policies import load_policy
    from sagrflow.eval.server import PolicyServer, policy_metadata

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    policy = load_policy(args.checkpoint, device=args.device)
    server = PolicyServer(policy, policy_metadata(policy, args.checkpoint), seed=args.seed,
                          client_steps=args.client_steps)
    print(f"serving {args.checkpoint} on ws://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    k = policy.config.action_model.temporal_delta_k
    if args.client_steps is not None and k is not None and args.client_steps != k:
        print(f"note: the world model predicts {k} steps after a chunk and clients call every {args.client_steps}: "
              "the drift and RRR will not act for requests without 'elapsed'", flush=True)
    try:
        server.run(args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
