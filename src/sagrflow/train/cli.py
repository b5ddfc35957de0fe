"""`sagrflow train --config-yaml FILE [--section.key value ...]`: train a policy."""

from __future__ import annotations

import argparse

EPILOG = """overrides: any config key as a dotted flag, read with YAML typing, validated like the file:
  --trainer.max_train_steps 10 --trainer.learning_rate.base 3e-4 --datasets.vla_data.data_root_dir data
without --config-yaml the embedded tiny CPU config on the built-in sim data is used
(`sagrflow sim generate --out data` first). Many processes: accelerate launch -m sagrflow.cli train ..."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a policy (YAML config plus dotted overrides)", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-yaml", default=None, help="training config (default: the embedded tiny CPU config)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of a config error")
    parser.set_defaults(func=_train, overrides=[])
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        # the dotted overrides are not argparse options: keep them for the config loader
        ns, rest = plain(args, namespace)
        ns.overrides = list(rest)
        return ns, []

    parser.parse_known_args = parse_known_args


def _train(args: argparse.Namespace) -> int:
    from sagrflow.train.config import config_to_yaml, load_config

    cfg = load_config(args.config_yaml, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from sagrflow.train.trainer import Trainer

    trainer = Trainer(cfg)
    state = trainer.fit()
    if trainer.accelerator.is_main_process:
        print(f"done: {state.step} steps ({state.skipped_steps} skipped), run directory {cfg.run_dir}")
    return 0
