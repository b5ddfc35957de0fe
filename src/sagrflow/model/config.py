"""Typed configuration of the SA-GR Flow policy (`framework.*`, DESIGN.md section 6).

Each dataclass validates itself in `__post_init__` and says what to change. `from_dict`
(the shared `sagrflow.core.config` one) builds the tree from plain (YAML) dicts, rejects
unknown keys by their dotted name and checks value types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sagrflow.core.config import from_dict, to_dict

FRAMEWORK_NAMES = ("SAGRFlow",)
WORLD_ACTION_SOURCES = ("teacher", "noisy")
TARGET_PASSES = ("separate", "fused")
DRIFT_RESIDUALS = ("same", "previous")
# framework.action_model.compile_world: off, the three world modules with dynamic shapes, or the world
# predictor and drift alone as CUDA graphs (model/policy.py COMPILE_WORLD says what each compiles)
COMPILE_WORLD_MODES = (False, True, "graphs")
# framework.action_model keys that say how the policy runs, not what it computes: a checkpoint loads,
# and a run resumes, with other values (SAGRPolicy.load's `runtime`)
RUNTIME_KEYS = ("compile_world", "cuda_graphs")
GEOMETRY_ENCODERS = ("none", "depth", "pointmap", "mapanything")
LAYER_MODES = ("first", "last")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BackboneConfig:
    """`framework.backbone`: which VLM, which of its layers feed the DiT, input size."""

    path: str = "tiny:qwen2_5_vl"  # a local checkpoint directory, or tiny:<arch> (built offline)
    layers: str | list[int] = "last"  # "first" / "last" N (N = dit_depth), or one VLM layer per DiT block
    image_size: list[int] = field(default_factory=lambda: [224, 224])  # (h, w) of to_chw_uint8, as in data
    dtype: str = "float32"  # weights as loaded; the trainer owns autocast
    # C images per sample, in the data's camera order: the trainer records the data's count (or refuses
    # another), predict_action refuses observations with another; null: not recorded, unchecked
    cameras: int | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("framework.backbone.path is empty: give a local VLM directory or tiny:qwen2_5_vl")
        if isinstance(self.layers, str):
            if self.layers not in LAYER_MODES:
                raise ValueError(f"framework.backbone.layers={self.layers!r}: use 'first', 'last' or a list of ints")
        else:
            self.layers = [int(i) for i in self.layers]
            if not self.layers:
                raise ValueError("framework.backbone.layers is an empty list: name one VLM layer per DiT block")
        self.image_size = [int(s) for s in self.image_size]
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"framework.backbone.image_size={self.image_size}: give [height, width] > 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"framework.backbone.dtype={self.dtype!r}: use one of {DTYPES}")
        if self.cameras is not None:
            self.cameras = int(self.cameras)
            if self.cameras < 1:
                raise ValueError(f"framework.backbone.cameras={self.cameras} must be >= 1, or null (unchecked)")


@dataclass
class ActionModelConfig:
    """`framework.action_model`: flow-matching head, world predictor, drift, losses."""

    action_horizon: int = 8
    action_dim: int = 7
    state_dim: int = 0  # 0: no state token
    repeated_diffusion_steps: int = 4  # R: noise/time draws per sample and step
    num_inference_timesteps: int = 10  # Euler steps in predict_action
    cuda_graphs: bool = True  # on a CUDA device, predict_action replays its Euler loop as a CUDA graph
    # torch.compile the modules only SA-GR runs: a few fused kernels in place of hundreds of small ones,
    # for a compile of tens of seconds at the first step. true: the anchor, world predictor and drift,
    # dynamic shapes; "graphs": the world predictor and drift alone (their shapes are fixed by the batch
    # size), recorded as CUDA graphs on a CUDA device (torch.compile's "reduce-overhead"); a training loop
    # that accumulates gradients calls SAGRPolicy.unpool_grads between micro-batches, as the trainer does
    compile_world: bool | str = False
    world_action_source: str = "teacher"  # world predictor sees expert actions or the noisy trajectory
    # t+k frames no other sample can lend: their own no-grad VLM call ("separate") or rows appended
    # to the image_t call, detached ("fused": one call fewer, but backward spans those rows too)
    target_pass: str = "separate"
    loss_w_fm: float = 1.0
    loss_w_dyn: float = 0.2
    loss_w_geo: float = 0.1
    loss_w_reg: float = 1e-3
    drift_eta: float = 0.1  # bound of the drift velocity correction
    # the residual the drift reads in training. "same" (DESIGN.md section 3): the sample's own t -> t+k
    # residual, whose prediction holds the chunk's own expert actions and whose target its own future,
    # neither of which predict_action has. "previous": as predict_action sees it, the prediction made
    # one interval before the chunk (detached) against the tokens of the chunk's own t frame; it comes
    # from the chain member before the sample (needs datasets.vla_data.chain_length >= 2 and
    # world_action_source teacher) and is 0 for a chain's first member, as at an episode's first call
    drift_residual: str = "same"
    use_geometric_branch: bool = False
    geometry_encoder: str = "depth"  # used when use_geometric_branch: depth | pointmap | mapanything
    geometry_checkpoint: str = ""  # local MapAnything weights directory (geometry_encoder: mapanything)
    rrr_threshold: float = 2.5  # residual ratio above which predict_action asks for a replan
    # k: steps from the frame the world predictor reads to the frame it predicts (the data's
    # temporal_delta_k; the trainer fills it). predict_action takes an observed residual only from
    # a call k steps after the chunk it follows; null (checkpoints from before it): from any call
    temporal_delta_k: int | None = None
    dit_depth: int | None = None  # DiT blocks; None: one per VLM layer
    dit_width: int = 256
    dit_heads: int = 4
    num_task_tokens: int = 8  # K
    world_depth: int = 2  # transformer layers of the world predictor
    time_eps: float = 1e-3  # training time t is drawn in [eps, 1 - eps]
    # visual tokens pooled against a (camera, row, column) basis into the AdaLN conditioning
    # (model/observation.py); basis functions per image axis, 0 = off
    observation_basis: int = 4
    # the hidden state the summary reads: 0 = the VLM's input embeddings (at image positions, the
    # vision tower's tokens, before the language model mixes them), -1 = the last layer
    observation_layer: int = 0

    def __post_init__(self) -> None:
        for name in ("action_horizon", "action_dim", "repeated_diffusion_steps", "num_inference_timesteps",
                     "dit_width", "dit_heads", "num_task_tokens", "world_depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"framework.action_model.{name}={getattr(self, name)} must be >= 1")
        if self.observation_basis < 0:
            raise ValueError(f"framework.action_model.observation_basis={self.observation_basis} must be >= 0 (0 = off)")
        if self.state_dim < 0:
            raise ValueError(f"framework.action_model.state_dim={self.state_dim} must be >= 0 (0 = no state)")
        if self.temporal_delta_k is not None and self.temporal_delta_k < 1:
            raise ValueError(f"framework.action_model.temporal_delta_k={self.temporal_delta_k} must be >= 1 or null")
        if self.dit_depth is not None and self.dit_depth < 1:
            raise ValueError(f"framework.action_model.dit_depth={self.dit_depth} must be >= 1 or null")
        if self.dit_width % self.dit_heads:
            raise ValueError(
                f"framework.action_model.dit_width={self.dit_width} is not divisible by dit_heads={self.dit_heads}"
            )
        if self.world_action_source not in WORLD_ACTION_SOURCES:
            raise ValueError(
                f"framework.action_model.world_action_source={self.world_action_source!r}: "
                f"use one of {WORLD_ACTION_SOURCES}"
            )
        if self.target_pass not in TARGET_PASSES:
            raise ValueError(f"framework.action_model.target_pass={self.target_pass!r}: use one of {TARGET_PASSES}")
        if type(self.cuda_graphs) is not bool:  # SAGRPolicy.load(cuda_graphs=...) bypasses the typed build
            raise ValueError(f"framework.action_model.cuda_graphs={self.cuda_graphs!r} must be true or false")
        if type(self.compile_world) not in (bool, str) or self.compile_world not in COMPILE_WORLD_MODES:
            raise ValueError(f"framework.action_model.compile_world={self.compile_world!r}: use one of "
                             f"{COMPILE_WORLD_MODES}")
        if self.drift_residual not in DRIFT_RESIDUALS:
            raise ValueError(f"framework.action_model.drift_residual={self.drift_residual!r}: use one of {DRIFT_RESIDUALS}")
        if self.drift_residual == "previous" and self.world_action_source != "teacher":
            raise ValueError("framework.action_model.drift_residual='previous' needs world_action_source 'teacher': "
                             "the previous interval's prediction is made from its executed (expert) actions")
        if self.geometry_encoder not in GEOMETRY_ENCODERS:
            raise ValueError(
                f"framework.action_model.geometry_encoder={self.geometry_encoder!r}: use one of {GEOMETRY_ENCODERS}"
            )
        if self.use_geometric_branch and self.geometry_encoder == "none":
            raise ValueError(
                "framework.action_model.use_geometric_branch is true but geometry_encoder is 'none': "
                "pick depth, pointmap or mapanything, or turn the branch off"
            )
        for name in ("loss_w_fm", "loss_w_dyn", "loss_w_geo", "loss_w_reg", "drift_eta"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"framework.action_model.{name}={getattr(self, name)} must be finite and >= 0")
        if not self.rrr_threshold >= 0:  # inf: never replan
            raise ValueError(f"framework.action_model.rrr_threshold={self.rrr_threshold} must be >= 0")
        if not 0.0 < self.time_eps < 0.5:
            raise ValueError(f"framework.action_model.time_eps={self.time_eps} must be in (0, 0.5)")

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"fm": self.loss_w_fm, "dyn": self.loss_w_dyn, "geo": self.loss_w_geo, "reg": self.loss_w_reg}


@dataclass
class FrameworkConfig:
    """`framework`: the policy."""

    name: str = "SAGRFlow"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    action_model: ActionModelConfig = field(default_factory=ActionModelConfig)

    def __post_init__(self) -> None:
        if self.name not in FRAMEWORK_NAMES:
            raise ValueError(f"framework.name={self.name!r}: use one of {FRAMEWORK_NAMES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "framework") -> FrameworkConfig:
        """Typed build: unknown keys and ill-typed values fail with their dotted path."""
        return from_dict(cls, data, prefix)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
