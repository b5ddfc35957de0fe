"""The typed training config: `datasets.vla_data`, `framework`, `trainer` (DESIGN.md section 6).

    cfg = load_config("configs/tiny_cpu.yaml", ["--trainer.max_train_steps", "10"])

YAML plus dotted overrides become one frozen `RunConfig`. An unknown key anywhere, in
the file or in an override, is a `ConfigError` naming the dotted path and the closest
valid key. Override values are read with YAML scalar typing (`10` -> int, `[a, b]` ->
list, `1e-4` -> float), then validated like the file. With no file, the embedded
default is the tiny CPU config on the built-in sim data (`TINY_CPU`, the same as
configs/tiny_cpu.yaml).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sagrflow.core.config import ConfigError, from_dict, to_dict
from sagrflow.data.config import VlaDataConfig
from sagrflow.model.config import FrameworkConfig

LR_SCHEDULERS = ("cosine", "constant")
LOGGERS = ("tensorboard", "wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
MIXED_PRECISION = ("bf16", "no")


@dataclass(frozen=True)
class TrainerConfig:
    max_train_steps: int = 100  # optimizer steps
    save_interval: int = 1000  # checkpoint every N steps (and always at the end); 0: only at the end
    # per-module learning rates: `base` for every parameter, a module path (prefix of parameter
    # names, e.g. `backbone` or `head.world`) for the parameters under it; a number = {base: number}
    learning_rate: float | dict[str, float] = field(default_factory=lambda: {"base": 1e-4, "backbone": 1e-5})
    freeze_modules: tuple[str, ...] = ()  # module paths whose parameters get no gradient
    gradient_accumulation_steps: int = 1
    sagr_phase_a_steps: int = 0  # phase A: world losses off, fm only
    sagr_phase_b_ramp_steps: int = 0  # phase B: world loss weights ramp linearly to their base values
    fm_only: bool = False  # plain flow-matching baseline: no t+k pass, no world losses
    # MiB per rank of frozen-VLM outputs (last layer of t+k frames) kept to skip the t+k VLM pass;
    # used only while every backbone parameter is frozen (freeze_modules: [backbone]); 0 = off
    target_cache_mb: int = 2048
    lr_scheduler: str = field(default="cosine", metadata={"choices": LR_SCHEDULERS})
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of each group's learning rate
    weight_decay: float = 0.0  # AdamW; never applied to biases, norms and other 1-d parameters
    adam_betas: tuple[float, ...] = (0.9, 0.95)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 disables clipping (the norm is still logged)
    mixed_precision: str = field(default="bf16", metadata={"choices": MIXED_PRECISION})  # on CUDA only
    seed: int = 42
    output_dir: str = "runs"
    run_name: str = ""  # run directory = output_dir/run_name; empty: the config file's stem
    resume: str = "auto"  # auto: the latest complete checkpoint of the run directory, if any | never | a checkpoint path
    save_total_limit: int = 0  # keep the newest N checkpoints; 0 keeps all
    log_interval: int = 10  # steps between metric records (the first step is always logged)
    logger: str = field(default="tensorboard", metadata={"choices": LOGGERS})  # metrics.jsonl is always written
    wandb_project: str = "sagrflow"
    wandb_mode: str = field(default="offline", metadata={"choices": WANDB_MODES})
    max_consecutive_skips: int = 20  # this many non-finite steps in a row stop the run
    detect_anomaly: bool = False  # debug: stop at the first non-finite tensor and name it (slow)

    def __post_init__(self):
        lr = self.learning_rate
        if not isinstance(lr, Mapping):
            lr = {"base": lr}
        try:
            lr = {str(k): float(v) for k, v in lr.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"trainer.learning_rate: every value must be a number, got {self.learning_rate!r}") from exc
        if "base" not in lr:
            raise ConfigError(f"trainer.learning_rate needs a 'base' rate, got {sorted(lr)}")
        if not all(0 <= v < math.inf for v in lr.values()):
            raise ConfigError(f"trainer.learning_rate: rates must be finite and >= 0, got {lr}")
        object.__setattr__(self, "learning_rate", lr)
        for name in ("max_train_steps", "gradient_accumulation_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_interval", "sagr_phase_a_steps", "sagr_phase_b_ramp_steps", "warmup_steps",
                     "save_total_limit", "max_grad_norm", "weight_decay", "max_consecutive_skips", "target_cache_mb"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"trainer.{name} must be finite and >= 0, got {getattr(self, name)}")
        if not 0 < self.adam_eps < math.inf:
            raise ConfigError(f"trainer.adam_eps must be finite and > 0, got {self.adam_eps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"trainer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"trainer.adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)}")
        if not self.resume:
            raise ConfigError("trainer.resume is empty: use auto, never or a checkpoint directory")

    def group_lr(self, name: str) -> float:
        return self.learning_rate[name]


@dataclass(frozen=True)
class DatasetsConfig:
    vla_data: VlaDataConfig = field(default_factory=VlaDataConfig)


@dataclass(frozen=True)
class RunConfig:
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    framework: FrameworkConfig = field(default_factory=FrameworkConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def data(self) -> VlaDataConfig:
        return self.datasets.vla_data

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.output_dir) / (self.trainer.run_name or "default")


# The embedded default: a few minutes of CPU training on `sagrflow sim generate --out data`.
TINY_CPU: dict[str, Any] = {
    "datasets": {
        "vla_data": {
            "data_root_dir": "data",
            "data_mix": "sim_all",
            "per_device_batch_size": 8,
            "include_state": True,
            "video_backend": "pyav",
            "image_size": [56, 56],
            "num_workers": 2,
        }
    },
    "framework": {
        "name": "SAGRFlow",
        "backbone": {"path": "tiny:qwen2_5_vl", "image_size": [56, 56]},
        "action_model": {
            "action_horizon": 8,
            "action_dim": 7,
            "state_dim": 8,
            # noise/time draws per VLM pass: the tiny head costs little next to the VLM, and flow matching
            # learns from the draws near the noise end (the demo's numbers for 2 and 8: DemoConfig, README)
            "repeated_diffusion_steps": 8,
            "num_inference_timesteps": 10,
            "world_action_source": "teacher",
            "loss_w_fm": 1.0,
            "loss_w_dyn": 0.2,
            "loss_w_geo": 0.1,
            "loss_w_reg": 0.001,
            "drift_eta": 0.1,
            "use_geometric_branch": False,
            "dit_width": 64,
            "dit_heads": 4,
            "num_task_tokens": 4,
            "world_depth": 1,
        },
    },
    "trainer": {
        "max_train_steps": 200,
        "save_interval": 100,
        "learning_rate": {"base": 3.0e-4, "backbone": 3.0e-4},
        "freeze_modules": [],
        "gradient_accumulation_steps": 1,
        "sagr_phase_a_steps": 20,
        "sagr_phase_b_ramp_steps": 40,
        "warmup_steps": 10,
        "output_dir": "runs",
        "run_name": "tiny_cpu",
        "log_interval": 10,
    },
}


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """`["--trainer.max_train_steps", "10", "--a.b=x"]` -> {"trainer.max_train_steps": 10, "a.b": "x"}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"unexpected argument {token!r}: overrides look like --section.key value")
        key = token[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override --{key} has no value")
            text = tokens[i + 1]
            i += 2
        if "." not in key:
            raise ConfigError(f"override --{key}: use the dotted path, e.g. --trainer.{key}")
        out[key] = _scalar(text)
    return out


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; a config number never is one
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `raw` with each dotted key set; validation happens in `build_config`."""
    out = _deep_copy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for j, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override --{dotted}: {'.'.join(parts[: j + 1])} is a value, not a section")
            node = child
        old = node.get(parts[-1])
        if isinstance(old, Mapping) and len(old) > 1 and not isinstance(value, Mapping):
            # e.g. --trainer.learning_rate 2e-4 over {base, backbone}: one rate for every module
            warnings.warn(f"override --{dotted} {value!r} replaces the whole mapping {dict(old)}; to set one "
                          f"entry use --{dotted}.<key>", stacklevel=2)
        node[parts[-1]] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    try:
        return from_dict(RunConfig, raw)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a section's own __post_init__ check
        raise ConfigError(str(exc)) from exc


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config is a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(config_yaml: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RunConfig:
    """The YAML file (or the embedded tiny CPU default) with dotted overrides, typed and validated."""
    raw = read_yaml(config_yaml) if config_yaml else _deep_copy(TINY_CPU)
    parsed = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    cfg = build_config(apply_overrides(raw, parsed))
    if not cfg.trainer.run_name:
        name = Path(config_yaml).stem if config_yaml else "tiny_cpu"
        cfg = replace(cfg, trainer=replace(cfg.trainer, run_name=name))
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """The resolved config; `load_config(path)` gives `cfg` back."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(config_to_yaml(cfg))
    tmp.replace(p)
    return p
