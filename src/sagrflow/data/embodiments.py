"""Embodiment data configs: which keys a robot's datasets hold and how a sample is cut from them.

Keys are GR00T modality names (`video.primary_image`, `state.x`, `action.gripper`);
each dataset's `meta/modality.json` maps them onto parquet columns and slices. A dataset
without one gets the first of the config's `default_modalities` whose columns it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sagrflow.core.normalize import MODES
from sagrflow.data.errors import DataError

LANGUAGE_KEY = "annotation.human.action.task_description"
_LIBERO_STATE = ("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper")
_LIBERO_ACTION = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")

# The layout of the LIBERO LeRobot conversions (libero_*_no_noops_1.0.0_lerobot), which the
# built-in simulator writes too.
LIBERO_MODALITY: dict = {
    "state": {n: {"start": i, "end": i + 1, "original_key": "observation.state"} for i, n in enumerate(_LIBERO_STATE)},
    "action": {n: {"start": i, "end": i + 1, "original_key": "action"} for i, n in enumerate(_LIBERO_ACTION)},
    "video": {
        "primary_image": {"original_key": "observation.images.image"},
        "wrist_image": {"original_key": "observation.images.wrist_image"},
    },
    "annotation": {"human.action.task_description": {"original_key": "task_index"}},
}


def _renamed(modality: dict, state: str, action: str, cameras: dict[str, str]) -> dict:
    return {
        "state": {n: {**s, "original_key": state} for n, s in modality["state"].items()},
        "action": {n: {**s, "original_key": action} for n, s in modality["action"].items()},
        "video": {n: {"original_key": cameras[n]} for n in modality["video"]},
        "annotation": modality["annotation"],
    }


# openpi's LIBERO conversion: PNG images in the parquet under plain names, no modality.json
OPENPI_LIBERO_MODALITY = _renamed(
    LIBERO_MODALITY, "state", "actions", {"primary_image": "image", "wrist_image": "wrist_image"}
)


@dataclass(frozen=True)
class EmbodimentConfig:
    robot_type: str
    video_keys: tuple[str, ...]  # camera order of image_t / image_tk
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    observation_indices: tuple[int, ...]  # must contain 0
    action_indices: tuple[int, ...]  # 0..H-1
    normalization: dict[str, str] = field(default_factory=dict)  # state/action key -> mode; others "none"
    image_size: tuple[int, int] = (224, 224)  # (h, w) images are resized to, in the workers
    temporal_delta_k: int | None = None  # default max(action_indices)
    default_modalities: tuple[dict, ...] = ()  # for datasets without meta/modality.json, tried in order

    def __post_init__(self):
        where = f"embodiment {self.robot_type!r}"
        if 0 not in self.observation_indices:
            raise DataError(where, f"observation_indices {list(self.observation_indices)} must contain 0")
        if any(i < 0 for i in self.observation_indices):
            raise DataError(where, f"observation_indices {list(self.observation_indices)} must be >= 0")
        if list(self.action_indices) != list(range(len(self.action_indices))) or not self.action_indices:
            raise DataError(where, f"action_indices must be 0..H-1, got {list(self.action_indices)}")
        if self.temporal_delta_k is not None and self.temporal_delta_k < 1:
            raise DataError(where, f"temporal_delta_k must be >= 1, got {self.temporal_delta_k}")
        for key, mode in self.normalization.items():
            if mode not in MODES:
                raise DataError(where, f"normalization mode {mode!r} for {key}", f"use one of {MODES}")
            if key not in self.state_keys + self.action_keys:
                raise DataError(where, f"normalization names {key!r}, which is not a state or action key")

    @property
    def k(self) -> int:
        return self.temporal_delta_k if self.temporal_delta_k is not None else max(self.action_indices)

    @property
    def horizon(self) -> int:
        return len(self.action_indices)

    @property
    def has_tk_observation(self) -> bool:
        """True iff the config asks for frames at t+k (the validity rule's first half)."""
        return self.k in self.observation_indices

    def mode(self, key: str) -> str:
        return self.normalization.get(key, "none")


def _libero_franka() -> EmbodimentConfig:
    arm = ("x", "y", "z", "roll", "pitch", "yaw")
    return EmbodimentConfig(
        robot_type="libero_franka",
        video_keys=("video.primary_image", "video.wrist_image"),
        state_keys=tuple(f"state.{n}" for n in _LIBERO_STATE),
        action_keys=tuple(f"action.{n}" for n in _LIBERO_ACTION),
        observation_indices=(0, 7),
        action_indices=tuple(range(8)),
        normalization={**{f"action.{n}": "min_max" for n in arm}, **{f"state.{n}": "min_max" for n in _LIBERO_STATE}},
        image_size=(224, 224),
        default_modalities=(LIBERO_MODALITY, OPENPI_LIBERO_MODALITY),
    )


_REGISTRY = {"libero_franka": _libero_franka}


def register_embodiment(name: str, factory) -> None:
    """Add a robot type; `factory()` returns its EmbodimentConfig."""
    if name in _REGISTRY:
        raise ValueError(f"embodiment {name!r} is already registered")
    _REGISTRY[name] = factory


def embodiment_names() -> list[str]:
    return sorted(_REGISTRY)


def embodiment_overrides(image_size=None, observation_indices=None, temporal_delta_k: int | None = None) -> dict:
    """The data section's replacements of each embodiment's fields (None keeps the embodiment's).
    A k set without observation_indices brings its own, [0, k]: a k outside them would make every
    pair invalid."""
    out: dict = {}
    if image_size:
        out["image_size"] = tuple(image_size)
    if temporal_delta_k is not None:
        out["temporal_delta_k"] = temporal_delta_k
        if observation_indices is None:
            observation_indices = (0, temporal_delta_k)
    if observation_indices is not None:
        out["observation_indices"] = tuple(observation_indices)
    return out


def get_embodiment(name: str, **overrides) -> EmbodimentConfig:
    """The registered config, with fields replaced by `overrides` (e.g. image_size)."""
    if name not in _REGISTRY:
        raise DataError(f"robot type {name!r}", "is not a registered embodiment", f"known: {embodiment_names()}")
    config = _REGISTRY[name]()
    if overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    return config
