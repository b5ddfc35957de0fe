"""The SA-GR Flow policy: training forward (DESIGN.md section 3), predict_action, save / load.

Legend: B batch, C cameras, R repeats, N = B*R, H horizon, A action dim, S state dim,
K task tokens, W width, L VLM sequence, D VLM hidden size.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sagrflow.core.device import to_device
from sagrflow.core.normalize import Normalizer
from sagrflow.model.action_head import ActionHead
from sagrflow.model.anchor import SemanticAnchor
from sagrflow.model.backbone import BackboneOutput, VLMBackbone, select_layers
from sagrflow.model.config import RUNTIME_KEYS, FrameworkConfig
from sagrflow.model.cuda_graphs import GraphCache
from sagrflow.model.geometry import build_geometry_encoder
from sagrflow.model.target_cache import Entry, TargetCache, pad_entries
from sagrflow.model.targets import TargetPlan, target_plan

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATS_FILE = "normalization.json"
BACKBONE_DIR = "backbone"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Encoded:
    """One VLM pass, as the head and the world model use it."""

    vl_embs_list: list[torch.Tensor]  # one (B, L, D) per DiT block
    mask: torch.Tensor  # (B, L) bool, False at padding
    task_tokens: torch.Tensor | None  # (B, K, W); None when not asked for
    observation: torch.Tensor | None  # (B, W) the head's observation summary; None when it has none
    vlm: BackboneOutput  # the pass itself (its last layer feeds the anchor and the target cache)


@dataclass
class _Memory:
    """What the policy predicted, at its last call, for the tokens it will see next."""

    task_tokens: torch.Tensor  # (K, W) observed at that call
    pred_next: torch.Tensor  # (K, W) predicted for after the issued chunk


COMPILABLE = ("anchor", "world", "drift")  # the modules compile_world can compile (by default, all)
# framework.action_model.compile_world -> (modules, torch.compile options) for SAGRPolicy.compile_world
COMPILE_WORLD = {True: (COMPILABLE, {"dynamic": True}),
                 "graphs": (("world", "drift"), {"mode": "reduce-overhead", "dynamic": False})}


class SAGRPolicy(nn.Module):
    # parameter prefixes that `forward(batch, fm_only=True)` leaves without gradient: a trainer
    # running the fm-only baseline under DDP freezes them (or enables find_unused_parameters)
    WORLD_MODULES = ("anchor", "geometry", "head.world", "head.drift", "head.geo_logits")

    def __init__(self, config: FrameworkConfig, backbone: VLMBackbone,
                 action_normalizer: Normalizer | None = None, state_normalizer: Normalizer | None = None):
        super().__init__()
        am = config.action_model
        self.config = config
        depth = am.dit_depth if am.dit_depth is not None else backbone.num_layers
        self.layer_ids = select_layers(config.backbone.layers, depth, backbone.num_layers)
        n = backbone.num_layers
        if am.observation_basis and not -(n + 1) <= am.observation_layer <= n:
            raise ValueError(f"framework.action_model.observation_layer={am.observation_layer} is outside the VLM's "
                             f"hidden states: 0 (input embeddings) to {n}, or -1 to -{n + 1} from the last")
        self.backbone = backbone
        self.geometry = (build_geometry_encoder(am.geometry_encoder, am.dit_width, am.geometry_checkpoint)
                         if am.use_geometric_branch else None)
        self.anchor = SemanticAnchor(backbone.hidden_size, am.dit_width, am.dit_heads, am.num_task_tokens,
                                     geometry=am.use_geometric_branch)
        self.head = ActionHead(am, backbone.hidden_size, depth)
        if am.compile_world:
            modules, options = COMPILE_WORLD[am.compile_world]
            self.compile_world(modules, **options)
        for name, norm, dim in (("action", action_normalizer, am.action_dim), ("state", state_normalizer, am.state_dim)):
            if norm is not None and norm.dim != dim:
                raise ValueError(f"{name} normalizer is {norm.dim}-dim but framework.action_model.{name}_dim={dim}")
        self.action_normalizer = action_normalizer
        self.state_normalizer = state_normalizer
        self._memory: dict = {}  # episode key -> _Memory
        self._noise: dict = {}  # episode key -> its seeded noise generator (predict_action's `seed`)
        # t+k VLM outputs of a frozen backbone (trainer.target_cache_mb); not a module: never saved
        self.target_cache: TargetCache | None = None
        self._graphs = GraphCache()  # predict_action's Euler loops, recorded per shape on a CUDA device

    def compile_world(self, modules: tuple[str, ...] = COMPILABLE, **options) -> None:
        """torch.compile the modules only SA-GR runs (of "anchor", "world", "drift") in place, so parameter
        names and checkpoints stay as they are. `options` go to `torch.compile` (benchmarks compare them);
        by default dynamic shapes, as batches differ in prompt length and in how many t+k frames they run.
        For a given batch size the world predictor's and drift's shapes are fixed by the config (B rows for
        the world predictor with teacher actions, B x R for the drift); the anchor's follow the prompt's
        length. predict_action runs them eagerly (`eager`)."""
        if isinstance(modules, str):
            modules = (modules,)
        parts = self.compilable()
        unknown = sorted(set(modules) - set(parts))
        if unknown:
            raise ValueError(f"compile_world: no module {unknown}; the modules are {list(parts)}")
        options.setdefault("dynamic", True)
        for name in modules:
            parts[name].compile(**options)

    def compilable(self) -> dict[str, nn.Module]:
        """The modules compile_world can compile, by name (COMPILABLE)."""
        return dict(zip(COMPILABLE, (self.anchor, self.head.world, self.head.drift), strict=True))

    def unpool_grads(self) -> None:
        """Copies the gradients of the modules compile_world "graphs" replays as CUDA graphs out of the graphs'
        memory. Autograd can take a graph's gradient output as a parameter's .grad as it is, and the next
        replay then overwrites it: gradients accumulated over micro-batches come out wrong or raise
        "accessing gradient tensor output of CUDAGraphs that has been overwritten" (torch's CUDA graph
        trees; pytorch#169545, #184003). The trainer calls it between a step's micro-batches, as a loop of
        one's own must; after the last, the optimizer step and zero_grad(set_to_none=True) come before any
        replay."""
        if self.config.action_model.compile_world != "graphs":
            return
        names = COMPILE_WORLD["graphs"][0]
        params = [p for name in names for p in self.compilable()[name].parameters() if p.grad is not None]
        if params:
            with torch.no_grad():
                copies = torch._foreach_mul([p.grad for p in params], 1.0)  # new memory, same values (exact)
            for p, grad in zip(params, copies, strict=True):
                p.grad = grad

    @contextlib.contextmanager
    def eager(self):
        """Inside, the compilable modules run their eager code (compile_world's compiled code stays
        cached for afterwards). predict_action runs in it: compile_world is a training setting, on a
        CUDA device the Euler loop is already one CUDA graph, inside which a compiled module's own CUDA
        graphs could not be recorded, and each new batch size would compile again. Not thread-safe:
        another thread's calls of this policy meanwhile run eagerly too.
        (`Module.compile` keeps the compiled call in `_compiled_call_impl`; None is the eager call.)"""
        compiled = {m: m._compiled_call_impl for m in self.compilable().values() if m._compiled_call_impl is not None}
        for m in compiled:
            m._compiled_call_impl = None
        try:
            yield
        finally:
            for m, call in compiled.items():
                m._compiled_call_impl = call

    @classmethod
    def from_config(cls, config: FrameworkConfig, action_normalizer: Normalizer | None = None,
                    state_normalizer: Normalizer | None = None) -> SAGRPolicy:
        """A new policy: pretrained VLM from `framework.backbone.path`, freshly initialised head."""
        backbone = VLMBackbone.from_pretrained(config.backbone.path, dtype=_DTYPES[config.backbone.dtype])
        return cls(config, backbone, action_normalizer, state_normalizer)

    # --- shared by training and inference ------------------------------------------------
    def encode(self, images: torch.Tensor, lang, geometry: torch.Tensor | None = None,
               task_tokens: bool = True) -> Encoded:
        """(B, C, 3, h, w) uint8 images, B instructions, optional (B, C, k, h, w) geometry -> Encoded."""
        out = self.backbone(images, lang)
        dtype = self.head.action_out.weight.dtype
        layers = out.layers
        vl_embs_list = [layers[i].to(dtype) for i in self.layer_ids]
        tokens = None
        if task_tokens:
            tokens = self._anchor(out.last_hidden_state, out.visual_mask, out.text_mask, images, geometry)
        return Encoded(vl_embs_list, out.attention_mask, tokens, self.head.observe(out), out)

    def _anchor(self, hidden: torch.Tensor, visual: torch.Tensor, text: torch.Tensor, images: torch.Tensor,
                geometry: torch.Tensor | None) -> torch.Tensor:
        """Last VLM layer (B, L, D) and its masks (B, L) -> task tokens (B, K, W)."""
        geo_tokens = self.geometry(images, geometry) if self.geometry is not None else None
        return self.anchor(hidden.to(self.head.action_out.weight.dtype), visual, text, geo_tokens)

    # --- training ------------------------------------------------------------------------
    def forward(self, batch, fm_only: bool = False, plan: TargetPlan | None = None) -> dict[str, torch.Tensor]:
        """A `Batch` -> per-sample (B,) loss_fm, loss_dyn, loss_geo, loss_reg (averaged over the R repeats),
        valid_tk (B,), token_change (B,) (a diagnostic, reduced as loss_dyn), and scalar diagnostics.
        Reduce with `losses.reduce_losses`.

        `fm_only=True` is the plain flow-matching baseline (benchmarks, ablations): one VLM
        pass, no world predictor, no drift; the world terms are 0.
        `plan`: the batch's `plan_targets`, made while the batch was still on the host (the trainer
        does); without it the forward reads the batch's bookkeeping back from the device, one sync.
        """
        am = self.config.action_model
        # 1. image_t (fallback: legacy image), image_tk (fallback: image_t)
        image_t, image_tk, has_image_tk, valid = _frames(batch)
        b = image_t.shape[0]
        state = _field(batch, "state_t", "state")
        self._check_state(state)
        if not am.state_dim:  # a policy without a state token ignores a batch's state
            state = None
        lang = list(batch.lang)
        if fm_only:
            plan = None
        elif plan is None:
            plan = target_plan(batch, valid, lang, has_image_tk)  # before any pass: one host read
        elif len(plan.source) != b:
            raise ValueError(f"a target plan for {len(plan.source)} samples given with a batch of {b}")
        cache = self._usable_cache() if plan is not None and plan.keys_t is not None else None
        depth_t, depth_tk = getattr(batch, "depth_t", None), getattr(batch, "depth_tk", None)
        fused = (plan is not None and plan.run and cache is None and am.target_pass == "fused"
                 and (depth_t is None) == (depth_tk is None))
        # 2. VLM on image_t, with gradients (fused: the t+k frames of plan.run ride along, detached)
        fused_next = None
        if fused:
            enc, fused_next = self._encode_fused(image_t, image_tk, lang, depth_t, depth_tk, plan.run)
        else:
            enc = self.encode(image_t, lang, depth_t, task_tokens=not fm_only)
        if cache is not None:  # a frozen VLM: this frame's last layer can serve a later sample's t+k
            v = enc.vlm
            cache.put(plan.keys_t, v.last_hidden_state, v.lengths, v.visual_mask, v.text_mask)
        r = am.repeated_diffusion_steps
        valid_tk_repeated = valid.repeat_interleave(r, 0)  # (N,)
        task_tokens_repeated = task_tokens_next_repeated = None
        counts = (0, 0, 0)
        if not fm_only:  # steps 3-5
            task_tokens_repeated, task_tokens_next_repeated, counts = self._world_targets(
                enc.task_tokens, image_tk, lang, depth_tk, valid, plan, cache, r, fused_next)
        # 6. the action head
        head_out = self.head(
            enc.vl_embs_list,
            batch.action.repeat_interleave(r, 0),
            None if state is None else state.repeat_interleave(r, 0),
            encoder_attention_mask=enc.mask,
            task_tokens=task_tokens_repeated,
            task_tokens_next=task_tokens_next_repeated,
            valid_tk=valid_tk_repeated,
            action_mask=batch.action_mask.repeat_interleave(r, 0),
            repeats=r,
            world=not fm_only,
            observation=enc.observation,
            previous=None if fm_only or am.drift_residual == "same" else _index(plan.previous, image_t.device),
        )
        out = {k: head_out[k].view(b, r).mean(1) for k in ("loss_fm", "loss_dyn", "loss_geo", "loss_reg")}
        out["valid_tk"] = valid
        with torch.no_grad():
            flag = partial(valid.new_full, ())  # a fill kernel: no host-to-device copy
            passed, reused, cached = (flag(c / b) for c in counts)
            out.update({
                "valid_tk_ratio": (valid > 0).float().mean(),
                "has_image_tk": flag(float(has_image_tk)),
                "task_tokens_next_available": flag(float(sum(counts) > 0)),
                "target_pass_ratio": passed,  # samples through the no-grad image_tk VLM pass
                "target_reuse_ratio": reused,  # samples whose t+k tokens came from another sample's t
                "target_cache_ratio": cached,  # samples whose t+k VLM output came from the target cache
                # per sample (B,), like loss_dyn: what "nothing changes" (pred_next = task_tokens) would score
                # as loss_dyn. loss_dyn at or above it: the world predictor has learned nothing; tokens that
                # hardly move: the VLM and anchor made them time-invariant. Reduce as loss_dyn is reduced
                "token_change": valid.new_zeros(b) if fm_only else
                (task_tokens_next_repeated - task_tokens_repeated.detach()).pow(2).mean(dim=(1, 2)).view(b, r).mean(1),
                "absmax/task_tokens": flag(0.0) if fm_only else enc.task_tokens.detach().abs().max(),
                "absmax/pred_velocity": head_out["pred_velocity"].detach().abs().max(),
                "absmax/drift": head_out["drift"].detach().abs().max(),
            })
        return out

    def plan_targets(self, batch) -> TargetPlan:
        """Where each sample's t+k tokens will come from (model/targets.py), read from the batch's
        bookkeeping: call it before the batch moves to the device, and pass it to `forward`."""
        _, _, has_image_tk, valid = _frames(batch)
        return target_plan(batch, valid, list(batch.lang), has_image_tk)

    def _usable_cache(self) -> TargetCache | None:
        cache = self.target_cache
        return cache if cache is not None and cache.usable(self.backbone) else None

    def _encode_fused(self, image_t: torch.Tensor, image_tk: torch.Tensor, lang: list[str],
                      depth_t: torch.Tensor | None, depth_tk: torch.Tensor | None,
                      run: list[int]) -> tuple[Encoded, torch.Tensor]:
        """One VLM call over the B image_t rows with the t+k frames of `run` appended -> the Encoded of
        the B rows (its `vlm` spans all rows) and the detached task tokens (n_run, K, W) of the others.

        The appended rows are the target pass's inputs; a row's outputs depend on that row alone
        (right padding, causal attention), so their tokens equal the separate no-grad pass's."""
        b = image_t.shape[0]
        rows = _index(run, image_t.device)
        geometry = None if depth_t is None else torch.cat([depth_t, depth_tk[rows]])
        enc = self.encode(torch.cat([image_t, image_tk[rows]]), lang + [lang[i] for i in run], geometry)
        head = Encoded([h[:b] for h in enc.vl_embs_list], enc.mask[:b], enc.task_tokens[:b],
                       None if enc.observation is None else enc.observation[:b], enc.vlm)
        return head, enc.task_tokens[b:].detach()

    def _world_targets(self, task_tokens: torch.Tensor, image_tk: torch.Tensor, lang: list[str],
                       geometry_tk: torch.Tensor | None, valid: torch.Tensor, plan: TargetPlan,
                       cache: TargetCache | None, r: int, computed: torch.Tensor | None = None):
        """Steps 3-5: task tokens (B, K, W) -> repeated current and next tokens (N, K, W), and how many
        samples' next tokens came from the target pass, from a reused sample, from the cache.
        `computed` (n_run, K, W): plan.run's tokens already made by the fused call."""
        # 3. t+k tokens, no graph, only for the valid pairs (an invalid pair's target is replaced in 5).
        # A pair whose t+k frame is another sample's t frame (collate's tk_index) reuses those tokens;
        # the rest run the target pass, which skips the frames a frozen VLM has already seen (cache).
        current = task_tokens.detach()
        table = current
        passed = cached = 0
        if plan.run:
            if computed is None:
                with torch.no_grad():
                    computed, cached = self._target_tokens(image_tk, lang, geometry_tk, plan, cache)
            passed = len(plan.run) - cached
            table = torch.cat([current, computed])  # (B + n_run, K, W): row B + j is run row j
        # one gather: sample i takes its own detached tokens (invalid), a reused sample's, or a computed row
        task_tokens_next = table[_index(plan.source, table.device)]  # (B, K, W)
        # 4. repeat R times -> (N, ...)
        task_tokens_repeated = task_tokens.repeat_interleave(r, 0)  # (N, K, W)
        task_tokens_next_repeated = task_tokens_next.repeat_interleave(r, 0)  # (N, K, W)
        valid_tk_repeated = valid.repeat_interleave(r, 0)  # (N,)
        # 5. invalid pairs: the target is the current tokens (detached), so their world terms carry nothing
        task_tokens_next_repeated = torch.where(
            valid_tk_repeated.view(-1, 1, 1) > 0, task_tokens_next_repeated, task_tokens_repeated.detach()
        )
        return task_tokens_repeated, task_tokens_next_repeated, (passed, plan.reused, cached)

    def _target_tokens(self, image_tk: torch.Tensor, lang: list[str], geometry_tk: torch.Tensor | None,
                       plan: TargetPlan, cache: TargetCache | None) -> tuple[torch.Tensor, int]:
        """The no-grad target pass over plan.run -> (task tokens (n_run, K, W), how many came from the cache).

        Only the last VLM layer is computed and kept (the anchor reads nothing else)."""
        rows = plan.run
        images = image_tk[_index(rows, image_tk.device)]  # (n_run, C, 3, h, w)
        geometry = None if geometry_tk is None else geometry_tk[_index(rows, geometry_tk.device)]
        keys = [plan.keys_tk[i] for i in rows] if cache is not None else None
        entries = cache.get(keys) if cache is not None else [None] * len(rows)
        miss = [j for j, e in enumerate(entries) if e is None]
        if miss:
            every = len(miss) == len(rows)
            out = self.backbone(images if every else images[_index(miss, images.device)],
                                [lang[rows[j]] for j in miss], all_layers=False)
            if cache is not None:
                cache.put([keys[j] for j in miss], out.last_hidden_state, out.lengths, out.visual_mask, out.text_mask)
            if every:  # nothing from the cache: the pass's own padded rows feed the anchor
                return self._anchor(out.last_hidden_state, out.visual_mask, out.text_mask, images, geometry), 0
            for m, j in enumerate(miss):
                n = out.lengths[m]
                entries[j] = Entry(out.last_hidden_state[m, :n], out.visual_mask[m, :n], out.text_mask[m, :n])
        hidden, visual, text = pad_entries(entries)  # (n_run, L, D), (n_run, L), (n_run, L)
        return self._anchor(hidden, visual, text, images, geometry), len(rows) - len(miss)

    def _check_state(self, state: torch.Tensor | None) -> None:
        s = self.config.action_model.state_dim
        if s and state is None:
            raise ValueError(f"framework.action_model.state_dim={s} but the batch has no state: "
                             "turn on datasets.vla_data.include_state or set state_dim 0")
        if state is not None and s and state.shape[-1] != s:
            raise ValueError(f"state has {state.shape[-1]} dims, framework.action_model.state_dim={s}")

    # --- inference -----------------------------------------------------------------------
    def reset(self, episode=None) -> None:
        """Forget the world-model memory and the seeded noise: of one episode (its id or batch slot), or of all."""
        if episode is None:
            self._memory.clear()
            self._noise.clear()
        else:
            self._memory.pop(episode, None)
            self._noise.pop(episode, None)

    def _episode_noise(self, keys: list, seed: int) -> list[torch.Generator]:
        """One CPU generator per row, made at an episode's first call from (seed, episode key) and
        advanced by each call: a row's noise depends on its episode and call count alone, not on
        which other episodes share the batch."""
        out = []
        for key in keys:
            if key not in self._noise:
                self._noise[key] = torch.Generator().manual_seed(zlib.crc32(repr((seed, key)).encode()))
            out.append(self._noise[key])
        return out

    @torch.no_grad()
    def predict_action(self, observations: list[dict], num_steps: int | None = None,
                       generator: torch.Generator | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
        """observations: B dicts {"image": [C HWC uint8 arrays], "lang": str, "state": (S,) raw,
        optional "depth": [C (h, w) or (h, w, k) arrays], optional "episode_id", optional "check",
        optional "elapsed"} -> {"actions": (B, H, A) un-normalized, "actions_normalized": (B, H, A),
        "rrr": (B,), "replan": (B,) bool, "residual": (B,) bool}.

        One VLM pass; the DiT's cross-attention keys/values are computed once and reused by
        every Euler step, and on a CUDA device the Euler loop is replayed as a CUDA graph
        (framework.action_model.cuda_graphs). The drift sees the observed residual: the tokens seen now minus
        what the policy predicted for them when it issued the chunk being executed. That prediction is
        for k = temporal_delta_k steps after the chunk was issued, so only a call then has a residual
        ("residual" True); "elapsed", the environment steps executed since that chunk was issued, says
        when a call comes. A call at any other step gets the plain flow chunk (no drift) and RRR 0.

        "check": True marks a mid-chunk check: the caller goes on executing the chunk it has unless
        this answer replans, so the row's memory changes only when it does. Noise: from `generator`
        (one draw for the batch), or with `seed` from each episode's own generator (`_episode_noise`),
        so an episode's chunks do not depend on which episodes share its batch; else torch's global one.
        The compilable modules run eagerly here, whatever framework.action_model.compile_world (`eager`).
        """
        if generator is not None and seed is not None:
            raise ValueError("predict_action takes a generator or a seed, not both")
        from sagrflow.model.inference import prepare_observations, sample_chunk

        am = self.config.action_model
        device = self.head.action_out.weight.device
        images, lang, state, geometry, keys = prepare_observations(self, observations, device)
        observed = self._observed(observations, keys)  # (B,) a prediction made for this very step
        noisy = am.world_action_source == "noisy"
        with self.eager():  # whatever compile_world
            enc = self.encode(images, lang, geometry)
            residual = torch.zeros_like(enc.task_tokens)  # (B, K, W)
            expected = torch.zeros(len(keys), device=device)
            for i, key in enumerate(keys):
                if observed[i]:
                    m = self._memory[key]
                    residual[i] = enc.task_tokens[i] - m.pred_next
                    expected[i] = (m.pred_next - m.task_tokens).norm()
            rrr = torch.where(expected > 0, residual.flatten(1).norm(dim=1) / expected.clamp_min(1e-12),
                              torch.zeros_like(expected))
            noise = generator if seed is None else self._episode_noise(keys, seed)
            x, temb_end = sample_chunk(self.head, enc, state, residual, num_steps or am.num_inference_timesteps,
                                       noise, self._graphs if am.cuda_graphs else None)
            pred_next = self.head.predict_next(enc.task_tokens, x, state, temb_end if noisy else None)
        replan = (rrr > am.rrr_threshold).cpu().numpy()
        for i, (k, o) in enumerate(zip(keys, observations, strict=True)):
            if replan[i] or not o.get("check", False):  # a kept chunk keeps its prediction (or none)
                self._memory[k] = _Memory(enc.task_tokens[i].clone(), pred_next[i].clone())
        actions = x if self.action_normalizer is None else self.action_normalizer.unnormalize(x.double())
        return {
            "actions": actions.float().cpu().numpy(),
            "actions_normalized": x.float().cpu().numpy(),
            "rrr": rrr.float().cpu().numpy(),
            "replan": replan,
            "residual": np.array(observed, dtype=bool),
        }

    def _observed(self, observations: list[dict], keys: list) -> list[bool]:
        """Whether each row's memory holds a prediction for the step it shows: the world predictor
        predicts the tokens k steps after the frame it read (temporal_delta_k), so a call any other
        number of steps after the chunk it follows has no residual to observe. A row without
        "elapsed" is taken to come k steps on."""
        k = self.config.action_model.temporal_delta_k
        out = []
        for i, (key, o) in enumerate(zip(keys, observations, strict=True)):
            elapsed = o.get("elapsed")
            if elapsed is not None and (isinstance(elapsed, bool) or not isinstance(elapsed, int | np.integer)
                                        or elapsed < 0):
                raise ValueError(f"observation {i}: 'elapsed' must be an int >= 0 (environment steps since the "
                                 f"chunk it follows was issued), got {elapsed!r}")
            if key not in self._memory:
                out.append(False)
                continue
            if elapsed is None and k is not None:
                warnings.warn(f"predict_action: an observation without 'elapsed' is taken to come k={k} steps "
                              "after the chunk it follows, the step the world predictor predicts; give "
                              "'elapsed' so that other calls leave the residual out",
                              stacklevel=4)  # the caller of predict_action, past torch.no_grad's wrapper
            out.append(elapsed is None or k is None or elapsed == k)
        return out

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Weights (safetensors), config and normalization stats in one self-contained directory."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        stats = {"action": None if self.action_normalizer is None else self.action_normalizer.to_json(),
                 "state": None if self.state_normalizer is None else self.state_normalizer.to_json()}
        (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
        self.backbone.save_preprocessors(out / BACKBONE_DIR)
        return out

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", **runtime) -> SAGRPolicy:
        """Strict load: a missing, unexpected or still-on-meta parameter is an error naming each.
        `runtime`: values of framework.action_model's RUNTIME_KEYS (compile_world, cuda_graphs) in place
        of the saved ones, e.g. `compile_world=False` for a policy trained compiled whose `forward` a probe
        calls on batches of many sizes (predict_action runs those modules eagerly anyway)."""
        from safetensors import safe_open

        unknown = sorted(set(runtime) - set(RUNTIME_KEYS))
        if unknown:
            raise ValueError(f"SAGRPolicy.load: {unknown} is not one of {list(RUNTIME_KEYS)}, the settings that "
                             "may differ from the checkpoint's (the others are what the policy computes)")
        src = Path(path)
        for name in (WEIGHTS_FILE, CONFIG_FILE, STATS_FILE, BACKBONE_DIR):
            if not (src / name).exists():
                raise ValueError(f"{src} is not a sagrflow policy directory: {name} is missing")
        config = FrameworkConfig.from_dict(json.loads((src / CONFIG_FILE).read_text()))
        config.action_model = replace(config.action_model, **runtime)  # checked again
        stats = json.loads((src / STATS_FILE).read_text())
        norms = {k: None if v is None else Normalizer.from_json(v) for k, v in stats.items()}
        policy = cls(config, VLMBackbone.from_config_dir(src / BACKBONE_DIR), norms["action"], norms["state"])
        with safe_open(str(src / WEIGHTS_FILE), framework="pt", device=str(device)) as f:
            # copied, one tensor at a time: a tensor read from the file can sit at an address where CPU
            # kernels take another path, and actions then differed from the saved policy's in the last bit
            state = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        missing, unexpected = policy.load_state_dict(state, strict=False, assign=True)
        on_meta = [n for n, p in (*policy.named_parameters(), *policy.named_buffers()) if p.is_meta]
        problems = ([f"missing: {n}" for n in missing] + [f"unexpected: {n}" for n in unexpected]
                    + [f"on meta device: {n}" for n in on_meta if n not in missing])
        if problems:
            raise RuntimeError(f"strict load of {src / WEIGHTS_FILE} failed:\n  " + "\n  ".join(problems))
        return policy.to(device)


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    # a host list copied without waiting for the queued VLM passes (core/device.py)
    return to_device(torch.tensor(rows, dtype=torch.long), device)


def _frames(batch) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor]:
    """A batch -> image_t (fallback: the legacy image), image_tk (fallback: image_t), whether it had
    image_tk, and valid_tk as float (B,) (none: all 0)."""
    image_t = _field(batch, "image_t", "image")
    if image_t is None:
        raise ValueError("the batch has neither image_t nor the legacy image")
    image_tk = getattr(batch, "image_tk", None)
    valid = getattr(batch, "valid_tk", None)
    valid = torch.zeros(image_t.shape[0], device=image_t.device) if valid is None else valid.float()
    return image_t, image_t if image_tk is None else image_tk, image_tk is not None, valid


def _field(batch, name: str, legacy: str):
    value = getattr(batch, name, None)
    return getattr(batch, legacy, None) if value is None else value

