"""Shared building blocks (one implementation each) and the layerwise DiT.

Attention, AdaLN, the time embedding and training-time sampling live here and are used
by the DiT, the semantic anchor and the world predictor alike.

Legend: N batch (B or B*R), T query tokens, L key tokens, W width, nh heads, hs head size,
Dk key width, D VLM hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sagrflow.core.device import to_device


def sample_time(n: int, eps: float, device: torch.device | None = None) -> torch.Tensor:
    """(n,) flow time in [eps, 1 - eps]: never the noise or the data endpoint.

    t = 1 - u with u ~ Beta(1.5, 1): density 1.5 * sqrt(1 - t), leaning toward the noise end
    (t = 0), as pi0 and GR00T sample it. Near t = 0 the noisy chunk says almost nothing about
    the actions, so only the observation can: that is where the policy learns to look.
    Leaning toward clean data instead lets the head learn to denoise while ignoring the images.
    """
    # drawn on the host; a non-blocking copy, as a blocking one waits for the GPU work queued before it
    u = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((n,))
    u = u if device is None else to_device(u, device)
    return (1.0 - eps - (1.0 - 2.0 * eps) * u).clamp(eps, 1.0 - eps)


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, L) bool keep-mask -> (N, 1, 1, L) additive bias, -inf where masked."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))[:, None, None, :]


class TimeEmbedding(nn.Module):
    """(N,) t in [0, 1] -> (N, W): sinusoidal features then an MLP."""

    def __init__(self, width: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[:, None] * freqs[None]  # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AdaLN(nn.Module):
    """LayerNorm whose shift and scale come from a conditioning vector (zero-initialised: plain LN at start)."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond_dim, 2 * width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (N, T, W), cond (N, W)
        shift, scale = self.mod(cond).unsqueeze(1).chunk(2, dim=-1)  # (N, 1, W) each
        return self.norm(x) * (1 + scale) + shift


@dataclass
class KV:
    """Projected keys/values of a context, reusable across queries (e.g. Euler steps)."""

    k: torch.Tensor  # (N, nh, L, hs)
    v: torch.Tensor  # (N, nh, L, hs)
    bias: torch.Tensor | None  # (N, 1, 1, L) additive, or None


class Attention(nn.Module):
    """Multi-head attention; keys/values may come from another sequence of width `kv_dim`."""

    def __init__(self, width: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_dim or width, 2 * width)
        self.out = nn.Linear(width, width)

    def project_kv(self, ctx: torch.Tensor, mask: torch.Tensor | None = None) -> KV:
        """ctx (N, L, Dk), mask (N, L) bool keep -> KV."""
        n, length, _ = ctx.shape
        k, v = self.kv(ctx).chunk(2, dim=-1)  # (N, L, W) each
        k = k.view(n, length, self.heads, -1).transpose(1, 2)  # (N, nh, L, hs)
        v = v.view(n, length, self.heads, -1).transpose(1, 2)  # (N, nh, L, hs)
        bias = None if mask is None else key_padding_bias(mask, k.dtype)
        return KV(k, v, bias)

    def attend(self, x: torch.Tensor, kv: KV) -> torch.Tensor:
        """x (N, T, W) queries against precomputed kv of M rows -> (N, T, W).

        N may be R * M with rows ordered as `repeat_interleave(R)`: the R repeats of a
        sample then share its keys/values, folded into the query axis instead of copying
        the context R times (attention treats queries independently, so this is exact).
        """
        n, t, w = x.shape
        m = kv.k.shape[0]
        if n % m:
            raise ValueError(f"{n} query rows cannot share {m} key/value rows")
        r = n // m
        q = self.q(x).view(m, r, t, self.heads, -1)  # (M, R, T, nh, hs)
        q = q.permute(0, 3, 1, 2, 4).reshape(m, self.heads, r * t, -1)  # (M, nh, R*T, hs)
        bias = None if kv.bias is None else kv.bias.to(q.dtype)
        y = F.scaled_dot_product_attention(q, kv.k, kv.v, attn_mask=bias)  # (M, nh, R*T, hs)
        y = y.view(m, self.heads, r, t, -1).permute(0, 2, 3, 1, 4)  # (M, R, T, nh, hs)
        return self.out(y.reshape(n, t, w))  # (N, T, W)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        return self.attend(x, self.project_kv(x if ctx is None else ctx, mask))


def mlp(width: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, mult * width), nn.GELU(approximate="tanh"), nn.Linear(mult * width, width))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + MLP (world predictor, anchor refinement)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, W)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DiTBlock(nn.Module):
    """Self-attention over [state, actions], cross-attention to one VLM layer, MLP; AdaLN(time) before each.

    Self-attention is what lets the state token reach the action tokens: a stack of
    cross-attention-only blocks would ignore it. The VLM layer is layer-normalized before
    its keys/values (as GR00T N1.5 normalizes its backbone features): inner layers are raw
    residual streams, where image tokens can outweigh the instruction's by orders of
    magnitude, so the instruction's keys would otherwise be almost all bias.
    """

    def __init__(self, width: int, heads: int, vlm_dim: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (AdaLN(width, width) for _ in range(3))
        self.self_attn = Attention(width, heads)
        self.norm_ctx = nn.LayerNorm(vlm_dim)
        self.cross_attn = Attention(width, heads, kv_dim=vlm_dim)
        self.mlp = mlp(width)

    def project_context(self, h: torch.Tensor, mask: torch.Tensor) -> KV:
        """(N, L, D) VLM layer, (N, L) keep-mask -> this block's cross-attention keys/values."""
        return self.cross_attn.project_kv(self.norm_ctx(h), mask)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ctx: KV) -> torch.Tensor:
        """x (N, T, W), temb (N, W), ctx: this block's projected VLM layer -> (N, T, W)."""
        x = x + self.self_attn(self.norm_self(x, temb))
        x = x + self.cross_attn.attend(self.norm_cross(x, temb), ctx)
        return x + self.mlp(self.norm_mlp(x, temb))


class LayerwiseDiT(nn.Module):
    """Block i cross-attends to VLM layer `vl_embs_list[i]`, with the VLM padding mask."""

    def __init__(self, depth: int, width: int, heads: int, vlm_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(DiTBlock(width, heads, vlm_dim) for _ in range(depth))
        self.norm_out = AdaLN(width, width)

    def prepare_context(self, vl_embs_list: list[torch.Tensor], mask: torch.Tensor) -> list[KV]:
        """One (N, L, D) tensor per block and the (N, L) keep-mask -> cached keys/values per block."""
        if len(vl_embs_list) != len(self.blocks):
            raise ValueError(f"{len(vl_embs_list)} VLM layers for a DiT of {len(self.blocks)} blocks")
        return [blk.project_context(h, mask) for blk, h in zip(self.blocks, vl_embs_list, strict=True)]

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: list[KV]) -> torch.Tensor:
        """x (N, T, W), temb (N, W) -> (N, T, W)."""
        for blk, ctx in zip(self.blocks, context, strict=True):
            x = blk(x, temb, ctx)
        return self.norm_out(x, temb)
