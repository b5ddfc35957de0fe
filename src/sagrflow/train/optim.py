"""Freezing by module path, AdamW parameter groups with per-module learning rates, the LR scheduler.

A module path is a prefix of parameter names on dotted boundaries: `backbone` covers
`backbone.vlm.language_model.layers.0.mlp.up_proj.weight`, `head.world` covers the world
predictor. A path that names nothing in the model is a config error with the closest
existing module, so a typo never silently trains (or freezes) the wrong thing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn

from sagrflow.core.config import ConfigError
from sagrflow.train.config import TrainerConfig
from sagrflow.train.schedule import lr_factor


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def check_module_paths(model: nn.Module, paths: Iterable[str], key: str) -> None:
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    for path in paths:
        if not any(_under(n, path) for n in names):
            tops = sorted({n.rsplit(".", 1)[0] if "." in n else n for n in names})
            match = difflib.get_close_matches(path, tops, n=1, cutoff=0.5)
            hint = f"did you mean {match[0]!r}?" if match else f"top-level modules: {sorted({n.split('.')[0] for n in names})}"
            raise ConfigError(f"{key}: no module or parameter {path!r} in the model ({hint})")


def freeze(model: nn.Module, paths: Iterable[str]) -> int:
    """Turn off gradients under each path; returns how many parameters were frozen."""
    paths = list(paths)
    check_module_paths(model, paths, "trainer.freeze_modules")
    count = 0
    for name, p in model.named_parameters():
        if any(_under(name, path) for path in paths):
            p.requires_grad_(False)
            count += p.numel()
    return count


def param_groups(model: nn.Module, cfg: TrainerConfig) -> list[dict]:
    """Trainable parameters grouped by (longest matching learning_rate path, decay or not)."""
    paths = sorted((k for k in cfg.learning_rate if k != "base"), key=len, reverse=True)
    check_module_paths(model, paths, "trainer.learning_rate")
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = next((path for path in paths if _under(name, path)), "base")
        decay = p.ndim >= 2 and cfg.weight_decay > 0
        group = groups.setdefault((owner, decay), {
            "name": owner if decay or cfg.weight_decay == 0 else f"{owner}/no_decay",
            "params": [], "param_names": [], "lr": cfg.learning_rate[owner], "initial_lr": cfg.learning_rate[owner],
            "weight_decay": cfg.weight_decay if decay else 0.0,
        })
        group["params"].append(p)
        group["param_names"].append(name)
    if not groups:
        raise ConfigError("trainer.freeze_modules froze every parameter: nothing left to train")
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    kwargs = {"betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}
    if any(p.is_cuda for g in groups for p in g["params"]):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    fn = partial(lr_factor, total_steps=cfg.max_train_steps, warmup_steps=cfg.warmup_steps, kind=cfg.lr_scheduler,
                 min_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
