"""`sagrflow model ...`: build offline tiny backbones."""

from __future__ import annotations

import argparse

TINY_ARCHS = ("qwen2_5_vl", "qwen3_vl", "llava")  # mirrors sagrflow.model.tiny.ARCHS, kept light for --help


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="model utilities (tiny offline backbones)")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    tiny = model_sub.add_parser(
        "make-tiny", help="write a tiny random-weight VLM (real architecture) with its tokenizer and image processor"
    )
    tiny.add_argument("--arch", required=True, choices=TINY_ARCHS)
    tiny.add_argument("--out", required=True, help="output directory (loadable like a downloaded checkpoint)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden-size", type=int, default=64, help="language-model width (vision tower stays tiny)")
    tiny.add_argument("--num-layers", type=int, default=4, help="language-model layers")
    tiny.set_defaults(func=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    from sagrflow.model.tiny import make_tiny

    out = make_tiny(args.arch, args.out, seed=args.seed, hidden_size=args.hidden_size,
                    num_layers=args.num_layers)
    print(f"wrote tiny {args.arch} to {out}")
    return 0
