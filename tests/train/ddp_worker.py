"""Run by test_distributed.py under `accelerate launch`: train, then save this rank's weights.

    ddp_worker.py OVERRIDES_JSON OUT_DIR [--deterministic-noise]
"""

from __future__ import annotations

import json
import sys

import torch


def deterministic_noise() -> None:
    """Flow time and noise as functions of each sample alone (as in the accumulation test)."""
    import sagrflow.model.action_head as action_head

    action_head.sample_time = lambda n, eps, device=None: torch.full((n,), 0.37, device=device)
    torch.randn_like = lambda x, **kw: torch.sin(7.3 * x + 1.1)


def main() -> None:
    overrides, out = json.loads(sys.argv[1]), sys.argv[2]
    if "--deterministic-noise" in sys.argv:
        deterministic_noise()
    from sagrflow.train.config import load_config
    from sagrflow.train.trainer import Trainer

    trainer = Trainer(load_config(None, overrides))
    trainer.fit()
    acc = trainer.accelerator
    cache = trainer.policy.target_cache
    torch.save({"weights": {n: p.detach().clone() for n, p in trainer.policy.named_parameters()},
                "cache_hits": None if cache is None else cache.hits,
                "world_size": acc.num_processes, "distributed_type": str(acc.distributed_type),
                "position": trainer.loader.position.state_dict()}, f"{out}/rank{acc.process_index}.pt")


if __name__ == "__main__":
    main()
