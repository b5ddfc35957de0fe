"""Atomic, complete checkpoints and exact resume.

Layout of `run_dir/checkpoints/step_XXXXXXX/` (XXXXXXX = optimizer steps completed):
  policy/                  the policy's own save: model.safetensors, config.json, normalization.json, backbone/
  config.yaml              the resolved run config
  normalizers.json         {robot_type: {state, action}} of the data mix
  optimizer.pt, scheduler.pt   (DeepSpeed / FSDP: accelerate/ holds the sharded optimizer state instead)
  trainer_state.json       step, skipped steps, samples seen, world size
  rng_rank{r}.pt           python, numpy, torch (and CUDA) generator states of rank r
  loader_rank{r}.json      rank r's data position (epoch, batches consumed)
  COMPLETE                 written last
Every file is written into `.tmp_step_XXXXXXX/`, flushed to disk, then the folder is
renamed: a crash mid-write leaves only a temp folder, which `latest_checkpoint` ignores
(it also wants COMPLETE), never a checkpoint that loads wrong.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sagrflow.core.config import ConfigError

_STEP_RE = re.compile(r"^step_(\d{7,})$")
COMPLETE = "COMPLETE"
POLICY_DIR = "policy"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed (skipped ones included)
    skipped_steps: int = 0
    samples_seen: int = 0
    world_size: int = 1
    per_device_batch_size: int = 0
    gradient_accumulation_steps: int = 1


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """step_XXXXXXX -> XXXXXXX, the optimizer steps it holds."""
    return int(_STEP_RE.match(path.name).group(1))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`trainer.resume` -> the checkpoint to load, or None for a fresh start."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_dir() and not (path / COMPLETE).is_file():  # a run directory: its latest
        latest = latest_checkpoint(path)
        if latest is None:
            raise ConfigError(f"trainer.resume={resume!r}: no complete checkpoint there")
        return latest
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"trainer.resume={resume!r} is not a complete checkpoint (no {COMPLETE} file); "
                          "use auto, never, a run directory or a checkpoint directory")
    return path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, run_dir: str | Path, state: TrainState, *, policy, optimizer, scheduler, loader,
                    config_yaml: str, normalizers: dict, save_total_limit: int = 0) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = checkpoints_root(run_dir)
    final = root / f"step_{state.step:07d}"
    tmp = root / f".tmp_step_{state.step:07d}"
    rank, main = accelerator.process_index, accelerator.is_main_process
    in_shards = sharded(accelerator)
    if main:
        bad = [n for n, p in policy.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:  # the step guard should make this unreachable; a checkpoint must never carry it
            raise RuntimeError(f"refusing to save non-finite weights at step {state.step}: {bad[:10]}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if main:
        policy.save(tmp / POLICY_DIR)
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "normalizers.json").write_text(json.dumps(
            {robot: {k: n.to_json() for k, n in pair.items()} for robot, pair in normalizers.items()}, indent=1))
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if not in_shards:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if in_shards:
        accelerator.save_state(str(tmp / "accelerate"))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    (tmp / f"loader_rank{rank}.json").write_text(json.dumps(loader.position.state_dict()))
    accelerator.wait_for_everyone()
    if main:
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text(f"step {state.step}\n")
        _fsync_tree(tmp)
        if final.exists():  # a re-save of the same step: swap, never leave the name empty of a good copy
            old = root / f".old_step_{state.step:07d}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        if save_total_limit > 0:
            for stale in complete_checkpoints(run_dir)[:-save_total_limit]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_train_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / "trainer_state.json").read_text()))


# what this run's config (and device) sets per group; a checkpoint brings the moments and step counts
_GROUP_SETTINGS = ("initial_lr", "weight_decay", "betas", "eps", "fused", "foreach")


def group_settings(optimizer) -> list[dict]:
    """This run's per-group settings, read before a checkpoint's optimizer state replaces them."""
    return [{k: g[k] for k in _GROUP_SETTINGS if k in g} for g in optimizer.param_groups]


def load_optimizer_state(accelerator, path: Path, optimizer, scheduler) -> None:
    """Before `prepare` for plain optimizers; the sharded (DeepSpeed/FSDP) state loads after it.
    Then `apply_settings`: the state brings the old run's settings along."""
    if (path / "optimizer.pt").is_file():
        state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        try:
            optimizer.load_state_dict(state)
        except ValueError as exc:
            raise ConfigError(f"{path / 'optimizer.pt'} does not fit this run's parameter groups ({exc}): "
                              "trainer.freeze_modules, trainer.learning_rate paths or trainer.weight_decay "
                              "(0 has no decay groups) changed since it was saved") from exc
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))


def apply_settings(optimizer, scheduler, settings: list[dict]) -> None:
    """After every load: the moments and the step count stay the checkpoint's, the settings (rates,
    weight decay, Adam's betas and eps) become this run's again, so a rate changed on resume is the
    rate trained with and the one config.yaml records; the current rate is this run's schedule at the step."""
    for group, mine in zip(optimizer.param_groups, settings, strict=True):
        group.update(mine)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def check_fresh_start(run_dir: Path) -> None:
    """A run that starts from scratch (trainer.resume never) must not write beside an earlier run's
    checkpoints: save_total_limit would delete its own newer checkpoints (lower step numbers) and
    the next `resume: auto` would continue the earlier run."""
    done = complete_checkpoints(run_dir)
    if done:
        raise ConfigError(f"{run_dir} holds checkpoints of an earlier run ({', '.join(p.name for p in done[-3:])}); "
                          "trainer.resume never would mix the two runs. Resume it (trainer.resume auto), or start "
                          "this one under another trainer.run_name or trainer.output_dir")


def set_aside_later(run_dir: Path, step: int) -> list[Path]:
    """Move the complete checkpoints of `run_dir` later than `step` (a run resumed from an older
    one abandons them) into `checkpoints/abandoned_after_step_<step>_<time>/`: kept, but no longer
    seen by `latest_checkpoint` or `save_total_limit`. -> their new paths."""
    later = [p for p in complete_checkpoints(run_dir) if checkpoint_step(p) > step]
    if not later:
        return []
    dest = checkpoints_root(run_dir) / f"abandoned_after_step_{step:07d}_{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in later:
        p.rename(dest / p.name)
    return [dest / p.name for p in later]


def load_sharded_state(accelerator, path: Path) -> None:
    if (path / "accelerate").is_dir():
        accelerator.load_state(str(path / "accelerate"))


def load_rank_state(path: Path, rank: int, world_size: int, old: TrainState, per_device_batch_size: int,
                    loader) -> bool:
    """RNG and data position of this rank; a changed world size maps the position by samples consumed.
    -> whether the checkpoint held this rank's RNG (a rank added on resume has none)."""
    rng_file = path / f"rng_rank{rank}.pt"
    restored = rng_file.is_file()
    if restored:
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    pos = json.loads((path / f"loader_rank{min(rank, old.world_size - 1)}.json").read_text())
    if world_size != old.world_size or per_device_batch_size != old.per_device_batch_size:
        consumed = pos["batch"] * old.world_size * old.per_device_batch_size
        pos = {"epoch": pos["epoch"], "batch": consumed // (world_size * per_device_batch_size)}
    loader.load_state_dict(pos)
    return restored


def sharded(accelerator) -> bool:
    """Whether FSDP or DeepSpeed shards the optimizer (and may gather parameters anew each step)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
