"""Observation summary: the visual tokens as one conditioning vector that keeps where things are.

Cross-attention reads the VLM tokens as a set: what a token says, not where it sits. A
pretrained VLM writes position into its features; a small or freshly initialised one does
not, and its cross-attention then stays close to uniform for thousands of steps, so the
action head learns from the state alone. The summary gives the head a path that needs no
attention to be learned first: each visual token's (normalized, projected) features are
pooled against a fixed positional basis of its camera, row and column, as a linear map
over the flattened token grid would, but with a size that does not depend on the grid.

Image tokens precede the instruction in the prompt, so a causal VLM's visual features
cannot know which object the instruction names. The mean of the instruction tokens
therefore gates the projected features before pooling (one factor per feature: the
instruction picks what to look at) and joins the pooled coefficients at the MLP's input.
On the sim's goal suite, where only the instruction says which block to move, this
gating is what lets the head bind the words to the place.

Next to that linear pooling, a spatial softmax per camera and feature (`keypoints`) reads
out where each feature fires: the expected (row, column) under a softmax of the feature over
the camera's tokens. A linear pooling can only say where at the resolution of its basis and
the token grid; a keypoint lands between token centres. It reads the hidden state that
`framework.action_model.observation_layer` names, by default the VLM's input embeddings, whose
image positions hold the vision tower's tokens before the language model mixes them.

On the sim's goal suite, probes trained as plain regressions for 2000 steps at batch 16 and
scored closed-loop on 40 episodes (benchmarks/readout_probe.py) put numbers on these
choices: the last layer, 4x4 tokens per camera: 0/40; the vision tower's tokens: 8/40; and
at 8x8 tokens: 23/40. The flow-matching policy built on the same summary, trained the same
way, scored 1 to 3 of 40 with 2 noise/time draws per sample and 17 to 35 of 100 with 8: the rest of
the gap is in how much the flow objective learns per step, not in what the summary carries.

The result joins the time embedding in the DiT's AdaLN, whose modulations start at zero:
at step 0 the head is the plain DiT either way, and the summary's gradients flow from
the first update of those modulations on.

Legend: B batch, L VLM sequence, D VLM hidden size, F projected features, K basis
functions per axis, C cameras (at most MAX_CAMERAS), W width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_CAMERAS = 4
FEATURES = 64


class ObservationSummary(nn.Module):
    def __init__(self, vlm_dim: int, width: int, basis: int):
        super().__init__()
        self.basis = basis
        self.norm = nn.LayerNorm(vlm_dim)
        self.proj = nn.Linear(vlm_dim, FEATURES)
        self.text = nn.Linear(vlm_dim, 2 * FEATURES)  # pooled instruction -> (gate, features)
        self.log_temperature = nn.Parameter(torch.zeros(FEATURES))  # keypoint softmax sharpness per feature
        inputs = FEATURES * (MAX_CAMERAS * basis * basis + 1) + FEATURES * MAX_CAMERAS * 2
        self.mlp = nn.Sequential(nn.Linear(inputs, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))

    def forward(self, hidden: torch.Tensor, visual_mask: torch.Tensor, visual_pos: torch.Tensor,
                text_mask: torch.Tensor, cameras: int) -> torch.Tensor:
        """hidden (B, L, D), visual_mask and text_mask (B, L) bool, visual_pos (B, L, 3) = (camera,
        row, column), row and column in [0, 1], C `cameras` per sample -> (B, W)."""
        if cameras > MAX_CAMERAS:  # checked on the host: reading visual_pos would wait for the GPU
            raise ValueError(f"the observation summary pools up to {MAX_CAMERAS} cameras, the batch has {cameras}; "
                             "set framework.action_model.observation_basis: 0 to turn it off")
        k = torch.arange(self.basis, device=hidden.device, dtype=torch.float32) * math.pi  # (K,)
        rows = torch.cos(visual_pos[..., 1:2].float() * k)  # (B, L, K): DCT basis over the rows
        cols = torch.cos(visual_pos[..., 2:3].float() * k)  # (B, L, K)
        slots = torch.arange(MAX_CAMERAS, device=hidden.device, dtype=visual_pos.dtype)
        # (B, L, C) one-hot camera membership (one_hot would check the indices on the host);
        # text and padding tokens weigh nothing
        cam = ((visual_pos[..., :1] == slots) & visual_mask.unsqueeze(-1)).float()
        basis = (cam[..., :, None, None] * rows[..., None, :, None] * cols[..., None, None, :]).flatten(2)
        normed = self.norm(hidden)
        weights = text_mask.unsqueeze(-1).float()
        instruction = (normed.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        gate, words = self.text(instruction.to(normed.dtype)).float().chunk(2, dim=-1)  # (B, F) each
        feats = self.proj(normed).float() * (1 + gate).unsqueeze(1)  # (B, L, F): the instruction picks features
        pooled = torch.einsum("blf,blp->bfp", feats, basis)  # (B, F, C*K*K)
        per_camera = cam.sum(1).clamp_min(1.0).sqrt()  # (B, C): coefficients of unit scale, whatever the grid
        pooled = pooled.view(*pooled.shape[:2], MAX_CAMERAS, -1) / per_camera[:, None, :, None]
        points = keypoints(feats * self.log_temperature.exp(), cam, visual_pos[..., 1:3].float())  # (B, C, F, 2)
        pooled = torch.cat([pooled.flatten(1), points.flatten(1), words], dim=1)
        return self.mlp(pooled.to(self.mlp[0].weight.dtype))  # (B, W)


def keypoints(logits: torch.Tensor, cam: torch.Tensor, rowcol: torch.Tensor) -> torch.Tensor:
    """Spatial softmax: logits (B, L, F), cam (B, L, C) 0/1 camera membership of each token, rowcol
    (B, L, 2) in [0, 1] -> (B, C, F, 2) the expected (row, column) of each feature, in [-1, 1], per camera.

    A feature that fires on one thing (the named block) reads out where that thing is, between
    token centres too, as a linear pooling cannot; cameras without tokens read (0, 0).
    """
    member = cam.transpose(1, 2).unsqueeze(2) > 0  # (B, C, 1, L)
    scores = logits.transpose(1, 2).unsqueeze(1).masked_fill(~member, float("-inf"))  # (B, C, F, L)
    weights = scores.softmax(-1).nan_to_num(0.0)  # rows of a camera with no tokens are all -inf
    return weights @ (2 * rowcol.unsqueeze(1) - 1)  # (B, C, F, L) @ (B, 1, L, 2)
