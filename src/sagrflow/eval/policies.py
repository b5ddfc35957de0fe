"""What the rollout harness drives: a tiny batched policy protocol and its adapters.

A policy serves several environment slots at once (the harness steps them in lockstep):
`reset(slot, episode)` starts an episode in a slot, `act(observations, slots, checks, elapsed)`
returns one action chunk per slot asked; `checks[i]` says slot i is still executing a chunk
and asks only whether to replan (the harness adopts the answer only if it replans),
`elapsed[i]` how many steps slot i has executed since it adopted its last chunk. Adapters:
the SA-GR checkpoint, the sim's scripted expert (it reads the privileged scene, so it only
runs on the built-in sim), a uniform random policy and a zero policy (the "do nothing"
baseline).

Legend: H chunk length, A action dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from sagrflow.model.policy import SAGRPolicy

ACTION_DIM = 7  # LIBERO and the sim: xyz, roll pitch yaw deltas, gripper
CAMERAS = ("image", "wrist_image")  # the libero_franka camera order


@dataclass(frozen=True)
class Episode:
    """What a policy learns at the start of an episode."""

    task: str
    instruction: str
    seed: int
    env: Any = None  # the environment itself; only privileged (scripted) policies may read it

    @property
    def key(self) -> str:
        return f"{self.task}#{self.seed}"


@dataclass(frozen=True)
class Chunk:
    """One policy answer: (H, A) actions to execute, and the world model's surprise signal."""

    actions: np.ndarray  # (H, A) float32, un-normalized
    replan: bool = False  # RRR above threshold: drop the rest of the chunk being executed
    rrr: float = 0.0
    residual: bool = False  # the answer saw a world-model residual (a prediction made for this step)

    def __post_init__(self):
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"a chunk's actions must be (H >= 1, A), got shape {self.actions.shape}")


class Policy(Protocol):
    name: str

    def reset(self, slot: int, episode: Episode) -> None: ...

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]: ...


def model_inputs(observations: Sequence[dict], episodes: Sequence[Episode], cameras: Sequence[str],
                 checks: Sequence[bool] | None, elapsed: Sequence[int] | None = None) -> list[dict]:
    """Environment observations of the slots asked -> `predict_action` observations (the server's examples)."""
    out = []
    n = len(episodes)
    for obs, episode, check, steps in zip(observations, episodes, checks or [False] * n, elapsed or [None] * n,
                                          strict=True):
        missing = [k for k in cameras if k not in obs]
        if missing:
            raise ValueError(f"observation lacks cameras {missing}; it has {sorted(obs)}")
        example = {"image": [obs[k] for k in cameras], "lang": episode.instruction, "state": obs.get("state"),
                   "episode_id": episode.key, "check": check}
        if steps is not None:
            example["elapsed"] = int(steps)
        out.append(example)
    return out


# ---------------------------------------------------------------------- baselines
class ExpertPolicy:
    """The sim's scripted expert, one step per chunk (it is closed-loop by nature)."""

    name = "expert"

    def __init__(self, noise: float = 0.0):
        self.noise = noise
        self._slots: dict[int, tuple[Any, Any]] = {}

    def reset(self, slot: int, episode: Episode) -> None:
        from sagrflow.sim.env import SimEnv
        from sagrflow.sim.expert import ScriptedExpert

        if not isinstance(episode.env, SimEnv):
            raise ValueError("the scripted expert reads the sim's scene: it only runs on the built-in sim suites")
        self._slots[slot] = (episode.env, ScriptedExpert(noise=self.noise, seed=episode.seed))

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]:
        return [Chunk(self._slots[s][1].act(self._slots[s][0])[None]) for s in slots]


class RandomPolicy:
    """Uniform actions in [-1, 1]; the floor a learned policy must clear."""

    name = "random"

    def __init__(self, horizon: int = 8, action_dim: int = ACTION_DIM):
        self.horizon, self.action_dim = horizon, action_dim
        self._rngs: dict[int, np.random.Generator] = {}

    def reset(self, slot: int, episode: Episode) -> None:
        self._rngs[slot] = np.random.default_rng(episode.seed)

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]:
        return [Chunk(self._rngs[s].uniform(-1, 1, (self.horizon, self.action_dim)).astype(np.float32))
                for s in slots]


class ZeroPolicy:
    """Stands still with the gripper open."""

    name = "zero"

    def __init__(self, horizon: int = 8, action_dim: int = ACTION_DIM):
        self.chunk = np.zeros((horizon, action_dim), np.float32)
        self.chunk[:, -1] = -1.0  # open

    def reset(self, slot: int, episode: Episode) -> None:
        pass

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]:
        return [Chunk(self.chunk.copy()) for _ in slots]


# ---------------------------------------------------------------------- SA-GR checkpoint
@dataclass
class SAGRAdapter:
    """A loaded `SAGRPolicy`: one batched `predict_action` for all slots that need a chunk.

    The world-model memory and the noise are keyed by episode, so concurrent episodes never mix
    residuals, and an episode's actions depend on (seed, episode) alone, not on how many
    environments run beside it or in which order the episodes come.
    """

    policy: Any  # sagrflow.model.SAGRPolicy (kept untyped: this module must not import torch)
    cameras: tuple[str, ...] = CAMERAS
    num_steps: int | None = None
    seed: int = 0
    name: str = "sagr"
    _episodes: dict[int, Episode] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        return self.policy.config.action_model.action_horizon

    def reset(self, slot: int, episode: Episode) -> None:
        old = self._episodes.get(slot)
        if old is not None:
            self.policy.reset(old.key)
        self._episodes[slot] = episode
        self.policy.reset(episode.key)

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]:
        batch = model_inputs(observations, [self._episodes[s] for s in slots], self.cameras, checks, elapsed)
        out = self.policy.predict_action(batch, num_steps=self.num_steps, seed=self.seed)
        return [Chunk(out["actions"][i].astype(np.float32), bool(out["replan"][i]), float(out["rrr"][i]),
                      bool(out["residual"][i])) for i in range(len(batch))]


def resolve_checkpoint(path: str | Path) -> Path:
    """A policy directory, a trainer checkpoint (`step_*/policy` inside) or a trainer run directory
    (its latest complete checkpoint) -> the policy directory."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    if (p / "policy" / "model.safetensors").is_file():
        return p / "policy"
    steps = sorted(c for c in (p / "checkpoints").glob("step_*") if (c / "COMPLETE").is_file())
    if steps and (steps[-1] / "policy" / "model.safetensors").is_file():
        return steps[-1] / "policy"
    raise ValueError(f"{p} holds no policy: give a policy directory, a trainer checkpoint or a trainer run directory")


def load_policy(checkpoint: str | Path, device: str = "cpu") -> SAGRPolicy:
    """A policy directory, trainer checkpoint or run directory -> the policy, in eval mode, for acting."""
    from sagrflow.model.policy import SAGRPolicy

    return SAGRPolicy.load(resolve_checkpoint(checkpoint), device=device).eval()


def load_sagr(checkpoint: str | Path, device: str = "cpu", num_steps: int | None = None, seed: int = 0) -> SAGRAdapter:
    return SAGRAdapter(load_policy(checkpoint, device), num_steps=num_steps, seed=seed)


@dataclass(frozen=True)
class PolicySpec:
    """A picklable recipe for a policy, so worker processes can build their own copy."""

    kind: str  # "sagr" | "expert" | "random" | "zero"
    checkpoint: str | None = None
    device: str = "cpu"
    num_steps: int | None = None
    seed: int = 0
    horizon: int = 8

    def build(self) -> Policy:
        if self.kind == "sagr":
            if not self.checkpoint:
                raise ValueError("policy 'sagr' needs a --checkpoint directory")
            return load_sagr(self.checkpoint, self.device, self.num_steps, self.seed)
        if self.kind == "expert":
            return ExpertPolicy()
        if self.kind == "random":
            return RandomPolicy(self.horizon)
        if self.kind == "zero":
            return ZeroPolicy(self.horizon)
        raise ValueError(f"unknown policy {self.kind!r}; valid: sagr, expert, random, zero")
