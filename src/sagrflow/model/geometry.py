"""Geometric branch: encoders that turn per-camera geometry into tokens for the semantic anchor.

Options (`framework.action_model.geometry_encoder`, active with `use_geometric_branch`):
  depth        a depth map per camera, (B, C, 1, h, w) float, from data that carries depth
  pointmap     a point map per camera, (B, C, 3, h, w) float (camera-frame xyz)
  mapanything  point maps predicted from the RGB images by MapAnything (optional package,
               imported lazily; frozen)
Every encoder is scale-calibrated: geometry is divided by its per-image median magnitude
before patchifying, so metres and millimetres give the same tokens; the anchor then gates
the tokens from zero (see anchor.py).

Legend: B batch, C cameras, k geometry channels, h w pixels, P patches per image, G = C*P, W width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GRID = 32  # geometry maps are resized to GRID x GRID before patchifying
PATCH = 8  # -> (GRID / PATCH)^2 = 16 tokens per camera
MAPANYTHING_HINT = (
    "the MapAnything geometry encoder needs the `mapanything` package: "
    "pip install 'mapanything @ git+https://github.com/facebookresearch/map-anything' "
    "and set framework.action_model.geometry_checkpoint to a local weights directory"
)


def scale_normalize(geom: torch.Tensor) -> torch.Tensor:
    """(M, k, h, w) depth (k=1) or xyz (k=3) -> divided by each image's median norm; non-finite -> 0."""
    geom = torch.nan_to_num(geom.float(), nan=0.0, posinf=0.0, neginf=0.0)
    norm = geom.norm(dim=1).flatten(1)  # (M, h*w)
    valid = norm > 0
    # median over valid pixels; an all-invalid image keeps scale 1
    filled = torch.where(valid, norm, torch.full_like(norm, float("nan")))
    scale = torch.nanmedian(filled, dim=1).values.nan_to_num(1.0).clamp_min(1e-6)  # (M,)
    return geom / scale[:, None, None, None]


class MapEncoder(nn.Module):
    """Patchify scale-normalized depth or point maps into tokens, one learned embedding per camera slot."""

    def __init__(self, channels: int, width: int, max_cameras: int = 8):
        super().__init__()
        self.channels = channels
        self.patch = nn.Conv2d(channels, width, kernel_size=PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.randn((GRID // PATCH) ** 2, width) * 0.02)  # (P, W)
        self.camera = nn.Parameter(torch.randn(max_cameras, width) * 0.02)

    def forward(self, images: torch.Tensor, geometry: torch.Tensor | None) -> torch.Tensor:
        """images (B, C, 3, h, w) uint8 (unused), geometry (B, C, k, h, w) -> tokens (B, G, W)."""
        if geometry is None:
            raise ValueError(
                "the geometric branch is on but the batch carries no geometry (depth_t / point maps); "
                "set framework.action_model.use_geometric_branch false or provide depth"
            )
        b, c, k = geometry.shape[:3]
        if k != self.channels:
            raise ValueError(f"geometry has {k} channels, this encoder expects {self.channels}")
        if c > self.camera.shape[0]:
            raise ValueError(f"{c} cameras, the geometry encoder supports at most {self.camera.shape[0]}")
        x = scale_normalize(geometry.reshape(b * c, k, *geometry.shape[3:]))  # (B*C, k, h, w)
        x = F.interpolate(x, size=(GRID, GRID), mode="bilinear", align_corners=False)  # (B*C, k, GRID, GRID)
        x = x.to(self.patch.weight.dtype)
        tok = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B*C, P, W)
        tok = tok.view(b, c, -1, tok.shape[-1]) + self.camera[:c, None, :]  # (B, C, P, W)
        return tok.reshape(b, -1, tok.shape[-1])  # (B, G, W)


class MapAnythingEncoder(nn.Module):
    """Frozen MapAnything predicts camera-frame point maps from RGB; a MapEncoder tokenizes them."""

    def __init__(self, width: int, checkpoint: str):
        super().__init__()
        try:
            from mapanything.models import MapAnything
        except ImportError as exc:
            raise ImportError(MAPANYTHING_HINT) from exc
        if not checkpoint:
            raise ValueError(MAPANYTHING_HINT)
        # a plain attribute, not a submodule: frozen, and kept out of the policy's state dict
        self.__dict__["mapanything"] = MapAnything.from_pretrained(checkpoint).eval().requires_grad_(False)
        self.maps = MapEncoder(3, width)

    @torch.no_grad()
    def _points(self, images: torch.Tensor) -> torch.Tensor:
        b, c = images.shape[:2]
        mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(1, 3, 1, 1)
        self.mapanything.to(images.device)  # not a submodule, so .to() on the policy does not move it
        views = [{"img": (images[:, i].float() / 255 - mean) / std, "data_norm_type": ["dinov2"]} for i in range(c)]
        preds = self.mapanything.infer(views, memory_efficient_inference=False)
        pts = torch.stack([p["pts3d_cam"] for p in preds], dim=1)  # (B, C, h, w, 3)
        return pts.permute(0, 1, 4, 2, 3)  # (B, C, 3, h, w)

    def forward(self, images: torch.Tensor, geometry: torch.Tensor | None) -> torch.Tensor:
        images = images.to(self.maps.patch.weight.device)  # uint8 images may arrive on the CPU
        return self.maps(images, self._points(images))


def build_geometry_encoder(kind: str, width: int, checkpoint: str = "") -> nn.Module:
    if kind == "depth":
        return MapEncoder(1, width)
    if kind == "pointmap":
        return MapEncoder(3, width)
    if kind == "mapanything":
        return MapAnythingEncoder(width, checkpoint)
    raise ValueError(f"unknown geometry encoder {kind!r}; use depth, pointmap or mapanything")
