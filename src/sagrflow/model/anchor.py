"""Semantic anchor: instruction-conditioned queries over the visual (and geometry) tokens -> task tokens.

Geometry tokens join the keys behind a learned logit bias that starts very negative and
a value gate that starts at zero, so switching the branch on leaves step 0 (almost)
unchanged; training opens them.

Legend: B batch, L VLM sequence, D VLM hidden size, G geometry tokens, K task tokens, W width.
"""

from __future__ import annotations

import torch
from torch import nn

from sagrflow.model.dit import KV, Attention, TransformerLayer, key_padding_bias

GEO_BIAS_INIT = -10.0  # exp(-10) ~ 5e-5 of the attention mass per geometry key at step 0


class SemanticAnchor(nn.Module):
    def __init__(self, vlm_dim: int, width: int, heads: int, num_tokens: int, geometry: bool):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * 0.02)  # (K, W)
        self.text_proj = nn.Linear(vlm_dim, width)
        self.key_norm = nn.LayerNorm(vlm_dim)
        self.attn = Attention(width, heads, kv_dim=width)
        self.vis_proj = nn.Linear(vlm_dim, width)
        self.refine = TransformerLayer(width, heads)
        # task tokens leave normalized: the world losses compare them in absolute units, and a
        # free scale grew 5 -> 13 (absmax) over a demo run while loss_dyn spiked 1000x with it
        self.out_norm = nn.LayerNorm(width)
        self.geometry = geometry
        if geometry:
            self.geo_norm = nn.LayerNorm(width)
            self.geo_bias = nn.Parameter(torch.tensor(GEO_BIAS_INIT))
            self.geo_gate = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        hidden: torch.Tensor,  # (B, L, D) a VLM layer
        visual_mask: torch.Tensor,  # (B, L) bool
        text_mask: torch.Tensor,  # (B, L) bool
        geo_tokens: torch.Tensor | None = None,  # (B, G, W)
    ) -> torch.Tensor:
        """-> task tokens (B, K, W)."""
        b = hidden.shape[0]
        tm = text_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        text = (hidden * tm).sum(1) / tm.sum(1).clamp_min(1.0)  # (B, D) masked mean of the instruction
        q = self.queries.unsqueeze(0) + self.text_proj(text).unsqueeze(1)  # (B, K, W)
        keys = self.vis_proj(self.key_norm(hidden))  # (B, L, W)
        # a sample without visual tokens (text-only prompt) falls back to all of its tokens
        keep = torch.where(visual_mask.any(1, keepdim=True), visual_mask, text_mask)  # (B, L)
        kv = self.attn.project_kv(keys, keep)
        if geo_tokens is not None:
            if not self.geometry:
                raise ValueError("geometry tokens given to an anchor built without the geometric branch")
            kv = self._join_geometry(kv, geo_tokens, b)
        tokens = self.attn.attend(q, kv)  # (B, K, W)
        return self.out_norm(self.refine(q + tokens))

    def _join_geometry(self, kv: KV, geo_tokens: torch.Tensor, b: int) -> KV:
        g = self.attn.project_kv(self.geo_norm(geo_tokens))  # scale-calibrated: normalized tokens
        gate = torch.tanh(self.geo_gate)
        k = torch.cat([kv.k, g.k], dim=2)  # (B, nh, L+G, hs)
        v = torch.cat([kv.v, gate * g.v], dim=2)  # (B, nh, L+G, hs)
        geo_bias = self.geo_bias.to(k.dtype).expand(b, 1, 1, geo_tokens.shape[1])  # (B, 1, 1, G)
        vis_bias = kv.bias if kv.bias is not None else key_padding_bias(
            torch.ones(kv.k.shape[0], kv.k.shape[2], dtype=torch.bool, device=k.device), k.dtype)
        return KV(k, v, torch.cat([vis_bias, geo_bias], dim=-1))  # bias (B, 1, 1, L+G)
