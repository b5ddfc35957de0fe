"""Expert demonstrations written as LeRobot datasets, one per task family.

`generate("all", 50, "data/")` writes data/sim_spatial, data/sim_object, data/sim_goal and
data/sim_long: the built-in twin of `libero_all` (named mix `sim_all`), in the layout
of the LIBERO LeRobot conversions, so the `libero_franka` data config reads them as is.
Episode e of a family is task e mod n_tasks, from seed `seed + e // n_tasks`; a seed
the expert fails on (rare) is replaced by the next unused one, so every episode succeeds.

Legend: T steps in an episode, h/w image size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagrflow.sim.env import ACTION_NAMES, STATE_NAMES, SimConfig, SimEnv
from sagrflow.sim.expert import ScriptedExpert
from sagrflow.sim.tasks import FAMILIES, task_names

FPS = 10
ROBOT_TYPE = "libero_franka"
CAMERA_KEYS = {"image": "observation.images.image", "wrist_image": "observation.images.wrist_image"}
FORMATS = ("v2.1", "v3.0")
CODECS = ("h264", "av1", "none")
_SEED_STRIDE = 1_000_000  # replacement seeds for failed episodes come from far above the regular ones


@dataclass(frozen=True)
class GenerateConfig:
    episodes: int = 50  # per family
    image_size: int = 128
    version: str = "v2.1"
    codec: str = "h264"  # "none": PNG images inside the parquet
    noise: float = 0.1  # expert action noise, for diverse demonstrations
    seed: int = 0  # first initial-state seed; evaluate on seeds the data did not use

    def __post_init__(self):
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.version not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.version!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be an even number >= 16, got {self.image_size}")


def dataset_name(family: str) -> str:
    return f"sim_{family}"


def suite_families(suite: str) -> tuple[str, ...]:
    if suite == "all":
        return FAMILIES
    if suite not in FAMILIES:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {['all', *FAMILIES]}")
    return (suite,)


def record_episode(env: SimEnv, expert: ScriptedExpert, seed: int) -> dict[str, np.ndarray] | None:
    """One expert rollout from `seed`: {"state": (T, 8), "action": (T, 7), "image"/"wrist_image": (T, h, w, 3)}.

    Frame t is the observation the action at t was taken from; None if the expert failed.
    """
    expert.reset(seed)
    obs, _ = env.reset(seed=seed)
    frames: dict[str, list[np.ndarray]] = {"state": [], "action": [], "image": [], "wrist_image": []}
    while True:
        action = expert.act(env)
        for key in ("state", "image", "wrist_image"):
            frames[key].append(obs[key])
        frames["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    if not info["success"]:
        return None
    return {key: np.stack(values) for key, values in frames.items()}


def _spec(cfg: GenerateConfig):
    from sagrflow.data.embodiments import LIBERO_MODALITY
    from sagrflow.data.lerobot.writer import DatasetSpec

    return DatasetSpec(
        fps=FPS, camera_keys=tuple(CAMERA_KEYS.values()), image_size=(cfg.image_size, cfg.image_size),
        state_names=STATE_NAMES, action_names=ACTION_NAMES, robot_type=ROBOT_TYPE, version=cfg.version,
        video_codec=None if cfg.codec == "none" else cfg.codec, modality=LIBERO_MODALITY,
    )


def generate_family(family: str, out: str | Path, cfg: GenerateConfig, overwrite: bool = False,
                    progress: Callable[[int], None] | None = None) -> Path:
    """Write `cfg.episodes` successful expert episodes of `family` to `out/sim_<family>`."""
    from sagrflow.data.lerobot.writer import Episode, LeRobotWriter

    names = task_names(family)
    envs = [SimEnv(name, SimConfig(image_size=cfg.image_size)) for name in names]
    expert = ScriptedExpert(noise=cfg.noise)
    root = Path(out) / dataset_name(family)
    spare = 0
    with LeRobotWriter(root, _spec(cfg), overwrite=overwrite) as writer:
        for e in range(cfg.episodes):
            env = envs[e % len(envs)]
            seed = cfg.seed + e // len(envs)
            while (frames := record_episode(env, expert, seed)) is None:
                spare += 1
                seed = cfg.seed + _SEED_STRIDE + spare
            images = {CAMERA_KEYS[k]: frames[k] for k in CAMERA_KEYS}
            writer.add_episode(Episode(env.instruction, frames["state"], frames["action"], images))
            if progress is not None:
                progress(1)
    return root


def generate(suite: str, out: str | Path, cfg: GenerateConfig, overwrite: bool = False,
             show_progress: bool = True) -> list[Path]:
    """Write one dataset per family of `suite` ("all" or a family) under `out`.

    One process: the video encoder already uses the other cores, and 200 episodes take
    seconds, so worker processes cost more to start than they save.
    """
    from tqdm import tqdm

    families = suite_families(suite)
    for family in families:  # fail before any work when a folder is taken
        root = Path(out) / dataset_name(family)
        if not overwrite and root.exists() and any(root.iterdir()):
            raise ValueError(f"{root} is not empty (pass overwrite / --overwrite or choose another --out)")
    bar = tqdm(total=cfg.episodes * len(families), unit="ep", desc=f"sim {suite}", disable=not show_progress)
    start = time.perf_counter()
    roots = [generate_family(f, out, cfg, overwrite, progress=bar.update) for f in families]
    bar.close()
    if show_progress:
        print(f"wrote {len(roots)} dataset(s), {cfg.episodes} episodes each, in {time.perf_counter() - start:.1f} s")
    return roots
