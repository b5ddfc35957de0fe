"""`sagrflow data ...`: look at datasets."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect LeRobot datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = data_sub.add_parser("inspect", help="print format, episodes, fps, features, tasks and stats")
    inspect.add_argument("path", help="dataset folder (the one holding meta/)")
    inspect.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from sagrflow.data.inspect import inspect_dataset

    print(inspect_dataset(args.path))
    return 0
