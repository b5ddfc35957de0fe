"""Layerwise flow-matching action head with the world predictor and the drift head.

Flow convention: x_t = (1 - t) * noise + t * actions, t = 1 is clean data, the target
velocity is actions - noise, inference integrates t from 0 to 1.

Legend: B batch, R repeats, N = B*R, H horizon, A action dim, S state dim, K task tokens,
W width (= task-token width), L VLM sequence, D VLM hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from sagrflow.model.config import ActionModelConfig
from sagrflow.model.dit import KV, LayerwiseDiT, TimeEmbedding, TransformerLayer, sample_time
from sagrflow.model.losses import masked_fm_loss
from sagrflow.model.observation import ObservationSummary


class WorldPredictor(nn.Module):
    """(task_tokens, action context, state[, time]) -> delta; pred_next = task_tokens + delta."""

    def __init__(self, cfg: ActionModelConfig):
        super().__init__()
        w = cfg.dit_width
        self.task_in = nn.Linear(w, w)
        self.action_in = nn.Linear(cfg.action_dim, w)
        self.action_pos = nn.Parameter(torch.randn(cfg.action_horizon, w) * 0.02)  # (H, W)
        self.state_in = nn.Linear(cfg.state_dim, w) if cfg.state_dim else None
        self.layers = nn.ModuleList(TransformerLayer(w, cfg.dit_heads) for _ in range(cfg.world_depth))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, w)

    def forward(self, task_tokens: torch.Tensor, actions: torch.Tensor, state: torch.Tensor | None,
                temb: torch.Tensor | None = None) -> torch.Tensor:
        """task_tokens (N, K, W), actions (N, H, A), state (N, S), temb (N, W) -> delta (N, K, W)."""
        k = task_tokens.shape[1]
        parts = [self.task_in(task_tokens), self.action_in(actions) + self.action_pos]
        if self.state_in is not None:
            parts.append(self.state_in(state).unsqueeze(1))  # (N, 1, W)
        if temb is not None:
            parts.append(temb.unsqueeze(1))  # (N, 1, W)
        x = torch.cat(parts, dim=1)  # (N, K + H [+1] [+1], W)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x[:, :k]))  # (N, K, W)


class DriftHead(nn.Module):
    """Pooled residual (and time) -> bounded velocity correction; exactly 0 for a zero residual.

    Bias-free maps through odd activations keep drift(0) = 0, so a policy with nothing
    to correct (first call of an episode) is the plain flow policy.
    """

    def __init__(self, cfg: ActionModelConfig):
        super().__init__()
        w, self.horizon, self.action_dim = cfg.dit_width, cfg.action_horizon, cfg.action_dim
        self.eta = cfg.drift_eta
        self.inp = nn.Linear(w, w, bias=False)
        self.time_mod = nn.Linear(w, w)
        self.out = nn.Linear(w, cfg.action_horizon * cfg.action_dim, bias=False)

    def forward(self, residual: torch.Tensor, t: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """residual (N, K, W), t (N,), temb (N, W) -> drift (N, H, A), |drift| <= eta * (1 - t)."""
        pooled = residual.mean(1)  # (N, W)
        h = torch.tanh(self.inp(pooled)) * (1 + self.time_mod(temb))  # (N, W)
        out = torch.tanh(self.out(h)).view(-1, self.horizon, self.action_dim)  # (N, H, A)
        # vanishes as t -> 1 (clean data): the correction steers the flow early, never the final actions
        return self.eta * (1.0 - t).view(-1, 1, 1).to(out.dtype) * out


class ActionHead(nn.Module):
    def __init__(self, cfg: ActionModelConfig, vlm_dim: int, depth: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.dit_width
        self.time = TimeEmbedding(w)
        self.action_in = nn.Linear(cfg.action_dim, w)
        self.action_pos = nn.Parameter(torch.randn(cfg.action_horizon, w) * 0.02)  # (H, W)
        self.state_in = nn.Linear(cfg.state_dim, w) if cfg.state_dim else None
        self.dit = LayerwiseDiT(depth, w, cfg.dit_heads, vlm_dim)
        self.observation = ObservationSummary(vlm_dim, w, cfg.observation_basis) if cfg.observation_basis else None
        self.action_out = nn.Linear(w, cfg.action_dim)
        self.world = WorldPredictor(cfg)
        self.drift = DriftHead(cfg)
        self.geo_logits = nn.Parameter(torch.zeros(w))  # W = softmax(logits): positive, trace 1

    # --- pieces shared by training and inference ---------------------------------------
    def prepare_context(self, vl_embs_list: list[torch.Tensor], mask: torch.Tensor) -> list[KV]:
        return self.dit.prepare_context(vl_embs_list, mask)

    def observe(self, vlm) -> torch.Tensor | None:
        """A `BackboneOutput` -> the observation summary (B, W) that joins the time embedding, or None."""
        if self.observation is None:
            return None
        layer = self.cfg.observation_layer
        if vlm.hidden_states is None:
            if layer != -1:
                raise ValueError(f"framework.action_model.observation_layer={layer} needs every hidden state: "
                                 "encode with all_layers=True")
            hidden = vlm.last_hidden_state
        else:
            hidden = vlm.hidden_states[layer]
        return self.observation(hidden.to(self.action_out.weight.dtype), vlm.visual_mask, vlm.visual_pos, vlm.text_mask,
                                vlm.cameras)

    def velocity(self, context: list[KV], x_t: torch.Tensor, temb: torch.Tensor,
                 state: torch.Tensor | None) -> torch.Tensor:
        """x_t (N, H, A), temb (N, W) (time embedding plus observation summary), state (N, S)
        -> predicted velocity (N, H, A)."""
        tokens = self.action_in(x_t) + self.action_pos  # (N, H, W)
        if self.state_in is not None:
            tokens = torch.cat([self.state_in(state).unsqueeze(1), tokens], dim=1)  # (N, 1 + H, W)
        x = self.dit(tokens, temb, context)
        return self.action_out(x[:, -self.cfg.action_horizon:])  # (N, H, A)

    def predict_next(self, task_tokens: torch.Tensor, action_ctx: torch.Tensor, state: torch.Tensor | None,
                     temb: torch.Tensor | None) -> torch.Tensor:
        """-> pred_next (N, K, W) = task_tokens + delta."""
        return task_tokens + self.world(task_tokens, action_ctx, state, temb)

    def geo_metric(self) -> torch.Tensor:
        """Positive diagonal of W, (W,), trace 1: learned relative weights that cannot collapse to 0.

        Trace 1 makes 0.5 r^T W r a weighted mean over the W dimensions, as loss_dyn is a mean, so
        its scale does not grow with dit_width. With trace W (W = I at init) it was a sum: at init,
        width 1024, loss_geo was about 270 and its weighted gradient on the VLM 39x loss_fm's, so
        gradient clipping and Adam handed the VLM to the geo term (5x at the demo's width 64)."""
        return torch.softmax(self.geo_logits, dim=0)

    # --- training ------------------------------------------------------------------------
    def _drift_input(self, residual: torch.Tensor, task_tokens: torch.Tensor, pred_next: torch.Tensor,
                     previous: torch.Tensor | None, repeats: int) -> torch.Tensor:
        """-> the residual (N, K, W) the drift reads (framework.action_model.drift_residual).

        "previous": sample j reads its chain predecessor's prediction, detached, against its own task
        tokens: what predict_action compares at a call k steps after the last (the prediction made one
        interval ago against the tokens seen now). Its value is the predecessor's residual, but
        loss_fm reaches only the current tokens, which the policy also computes at inference, never
        the world predictor. Without a predecessor the drift reads 0 (drift exactly 0), as at an
        episode's first call. A sample's R rows hold one prediction (teacher actions)."""
        if self.cfg.drift_residual == "same":
            return residual
        if previous is None:
            raise ValueError("drift_residual 'previous' needs each sample's chain predecessor (TargetPlan.previous)")
        before = pred_next[::repeats].detach()[previous.clamp_min(0)]  # (B, K, W) the predecessor's prediction
        picked = torch.where((previous >= 0).view(-1, 1, 1), task_tokens[::repeats] - before,
                             torch.zeros((), dtype=residual.dtype, device=residual.device))
        return picked.repeat_interleave(repeats, 0)  # (N, K, W)

    def forward(
        self,
        vl_embs_list: list[torch.Tensor],  # one (B, L, D) per DiT block
        actions: torch.Tensor,  # (N, H, A) normalized expert chunk
        state: torch.Tensor | None,  # (N, S)
        encoder_attention_mask: torch.Tensor,  # (B, L) bool
        task_tokens: torch.Tensor,  # (N, K, W)
        task_tokens_next: torch.Tensor,  # (N, K, W), no graph
        valid_tk: torch.Tensor,  # (N,)
        action_mask: torch.Tensor,  # (N, H)
        repeats: int = 1,
        world: bool = True,
        observation: torch.Tensor | None = None,  # (B, W) `observe`'s summary, one row per sample
        previous: torch.Tensor | None = None,  # (B,) long: each sample's chain predecessor, -1 for none
    ) -> dict[str, torch.Tensor]:
        """Per-sample (N,) losses fm, dyn, geo, reg and the tensors the diagnostics read.

        The VLM inputs arrive once per sample (B); their keys/values are projected once
        and shared by the sample's R repeats, which equals repeating `vl_embs_list` R times
        without the R copies. The world terms are returned for every sample: masking them
        by `valid_tk` is the reduction's job (`losses.reduce_losses`, the trainer's share),
        so `valid_tk` is only checked here. `world=False` is the plain flow-matching
        baseline: no world predictor, no drift, world terms 0 (`task_tokens*` may be None).
        `previous` (TargetPlan.previous) is read with drift_residual "previous" only.
        """
        n = actions.shape[0]
        context = self.prepare_context(vl_embs_list, encoder_attention_mask)  # shared by the R repeats
        if context[0].k.shape[0] * repeats != n or valid_tk.shape != (n,):
            raise ValueError(f"{context[0].k.shape[0]} VLM rows x {repeats} repeats and valid_tk "
                             f"{tuple(valid_tk.shape)} for {n} action rows")
        noise = torch.randn_like(actions)
        # t stays float32: in bf16, 1 - eps would round to the endpoint 1.0
        t = sample_time(n, self.cfg.time_eps, actions.device)  # (N,)
        tt = t.view(-1, 1, 1)
        x_t = ((1 - tt) * noise + tt * actions).to(actions.dtype)  # (N, H, A)
        temb = self.time(t)  # (N, W)
        cond = temb if observation is None else temb + observation.repeat_interleave(repeats, 0)
        v_pred = self.velocity(context, x_t, cond, state)
        if not world:
            zeros = torch.zeros(n, dtype=v_pred.dtype, device=v_pred.device)
            return {"loss_fm": masked_fm_loss(v_pred, actions - noise, action_mask), "loss_dyn": zeros,
                    "loss_geo": zeros, "loss_reg": zeros, "pred_velocity": v_pred,
                    "drift": torch.zeros_like(v_pred), "t": t}
        noisy = self.cfg.world_action_source == "noisy"
        if noisy or repeats == 1:
            pred_next = self.predict_next(task_tokens, x_t if noisy else actions, state, temb if noisy else None)
        else:  # teacher actions: the R repeats of a sample are identical rows, so predict once and repeat
            first = slice(None, None, repeats)  # row r*i is sample i's first repeat
            once = self.predict_next(task_tokens[first], actions[first], None if state is None else state[first], None)
            pred_next = once.repeat_interleave(repeats, 0)  # (N, K, W); backward sums the R copies, as before
        residual = task_tokens_next - pred_next  # (N, K, W)
        drift = self.drift(self._drift_input(residual, task_tokens, pred_next, previous, repeats), t, temb)
        v_final = v_pred + drift
        pooled = residual.mean(1)  # (N, W)
        return {
            "loss_fm": masked_fm_loss(v_final, actions - noise, action_mask),
            "loss_dyn": (pred_next - task_tokens_next).pow(2).mean(dim=(1, 2)),
            "loss_geo": 0.5 * (pooled.pow(2) * self.geo_metric()).sum(-1),
            "loss_reg": drift.pow(2).mean(dim=(1, 2)),
            "pred_velocity": v_pred,
            "drift": drift,
            "t": t,
        }
