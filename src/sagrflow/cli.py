"""The `sagrflow` command. Each subcommand lives in its package's `cli` module.

A package's `cli` module exposes `register(subparsers)`; it adds its parser and sets
`func` to a handler that imports the heavy code only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# package cli modules, in the order their commands appear in --help
COMMAND_MODULES = (
    "sagrflow.data.cli",
    "sagrflow.model.cli",
    "sagrflow.sim.cli",
    "sagrflow.tools.cli",
    "sagrflow.train.cli",
    "sagrflow.eval.cli",
    "sagrflow.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagrflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # user mistakes (bad path, bad config): one line, no traceback
        if getattr(args, "traceback", False):
            raise
        print(f"sagrflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # `python -m sagrflow.cli`
    sys.exit(main())
