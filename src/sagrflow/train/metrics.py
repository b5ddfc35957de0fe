"""Metric names (DESIGN.md section 4) and where the records go.

Every record goes to `run_dir/metrics.jsonl` (one JSON object per line: `step` plus
metric names). TensorBoard (default) receives the same scalars when
`torch.utils.tensorboard` can import (it needs the `tensorboard` package); otherwise a
single warning and the jsonl file alone. wandb is imported only when asked for;
`wandb_mode: offline` needs no account or network.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

# --- names kept exactly as DESIGN.md section 4 lists them ------------------------------
TEMPORAL = ("debug/temporal/has_image_tk", "debug/temporal/valid_tk_ratio",
            "debug/temporal/task_tokens_next_available")
SCHEDULE = tuple(f"debug/sagr_schedule/{n}" for n in ("phase", "alpha", "loss_w_fm", "loss_w_dyn", "loss_w_geo",
                                                        "loss_w_reg"))
LOSS_DEBUG = ("debug/loss/weight_dyn", "debug/loss/weight_geo", "debug/loss/weight_reg", "debug/loss/valid_tk_ratio")
# --- the rest: each loss, grad norm, lr, throughput, the two VLM passes, stability -----
LOSSES = ("loss/total", "loss/fm", "loss/dyn", "loss/geo", "loss/reg")
OPTIM = ("optim/grad_norm", "optim/lr")  # plus optim/lr/<group> for each parameter group
PERF = ("perf/samples_per_s", "perf/step_time_s", "perf/data_time_s", "perf/vlm_t_time_s", "perf/vlm_tk_time_s",
        "perf/target_pass_ratio", "perf/target_reuse_ratio", "perf/target_cache_ratio")  # where t+k targets came from
STABILITY = ("stability/skipped_steps", "stability/step_skipped")
MAGNITUDES = ("debug/absmax/task_tokens", "debug/absmax/pred_velocity", "debug/absmax/drift")
# the world model against "nothing changes": token_change is the loss_dyn of pred_next = task_tokens;
# WORLD_SKILL, loss/dyn over it (at or above 1 the world predictor has learned nothing of the dynamics),
# is logged only where it is defined: token_change > 0
WORLD = ("debug/world/token_change",)
WORLD_SKILL = "debug/world/dyn_over_change"
ALL = TEMPORAL + SCHEDULE + LOSS_DEBUG + LOSSES + OPTIM + PERF + STABILITY + MAGNITUDES + WORLD


class _Jsonl:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", buffering=1)  # line-buffered: a crash loses at most the current line

    def log(self, step: int, values: Mapping[str, float]) -> None:
        row = {"step": step}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})  # JSON has no NaN
        self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._f.close()


class _TensorBoard:
    def __init__(self, log_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the events of steps >= start_step written before this session: a resumed run
        # replays the steps after its checkpoint, and shows them once, as metrics.jsonl does
        self._w = SummaryWriter(str(log_dir), purge_step=start_step)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.close()


class _Wandb:
    def __init__(self, run_dir: Path, project: str, mode: str, name: str, config: dict):
        import wandb

        self._run = wandb.init(project=project, mode=mode, name=name, dir=str(run_dir), config=config,
                               resume="allow", id=name)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def close(self) -> None:
        self._run.finish()


class MetricsLogger:
    """`log(step, {name: float})` on the main process; a no-op elsewhere."""

    def __init__(self, run_dir: str | Path, backend: str = "tensorboard", enabled: bool = True, *,
                 wandb_project: str = "sagrflow", wandb_mode: str = "offline", run_name: str = "",
                 config: dict | None = None, start_step: int = 0):
        """`start_step`: the first step this session logs (a resumed run's checkpoint step)."""
        self.sinks: list = []
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.sinks.append(_Jsonl(run_dir / "metrics.jsonl"))
        if backend == "tensorboard":
            try:
                self.sinks.append(_TensorBoard(run_dir / "tensorboard", start_step))
            except ImportError as exc:
                warnings.warn(f"TensorBoard unavailable ({exc}); metrics go to {run_dir / 'metrics.jsonl'} only. "
                              "pip install tensorboard to get it", stacklevel=2)
        elif backend == "wandb":
            try:
                self.sinks.append(_Wandb(run_dir, wandb_project, wandb_mode, run_name, config or {}))
            except ImportError as exc:
                warnings.warn(f"wandb unavailable ({exc}); metrics go to {run_dir / 'metrics.jsonl'} only. "
                              "pip install wandb to get it", stacklevel=2)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items()}
        for sink in self.sinks:
            sink.log(step, clean)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _records(path: Path, lines: list[str]) -> list[tuple[str, dict]]:
    """(line, record) of each record of a metrics.jsonl's lines. A last line that does not parse is a
    record cut short (the process died mid-write) and is left out; any other such line is an error."""
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1} is not a JSON record: {line[:80]!r}") from None
    return out


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the records of steps >= `step` (logged after the checkpoint a run resumes from) and a
    torn last line; returns how many lines went."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    keep = [line for line, row in _records(path, lines) if row["step"] < step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)
    return len(lines) - len(keep)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, non-finite values back as floats."""
    path = Path(path)
    rows = (row for _, row in _records(path, path.read_text().splitlines()))
    return [{k: float(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
