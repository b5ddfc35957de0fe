"""`sagrflow check-temporal`: the temporal-supervision contract check."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from sagrflow.tools import check_temporal

    parser = sub.add_parser("check-temporal", help="check that a config and data mix satisfy the t -> t+k contract",
                            description=check_temporal.__doc__)
    check_temporal.add_arguments(parser)
    parser.set_defaults(func=check_temporal.run)
