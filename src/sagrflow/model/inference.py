"""Inference helpers of `SAGRPolicy.predict_action`: observation -> tensors, Euler sampling.

Legend: B batch, C cameras, H horizon, A action dim, S state dim, K task tokens, W width, E Euler steps.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from sagrflow.core.image import to_chw_uint8
from sagrflow.model.cuda_graphs import GraphCache


def observation_images(obs: dict, size: tuple[int, int]) -> torch.Tensor:
    """One observation's camera list -> (C, 3, h, w) uint8, resized exactly as the data workers do."""
    images = obs.get("image")
    if not images:
        raise ValueError("observation has no 'image' list (one HWC uint8 array per camera)")
    return torch.stack([to_chw_uint8(np.asarray(img), size) for img in images])


def _geometry(obs: dict, size: tuple[int, int]) -> torch.Tensor | None:
    """Optional per-camera depth (h, w) / (h, w, k) -> (C, k, h, w) float at the image size."""
    depth = obs.get("depth")
    if depth is None:
        return None
    maps = []
    for d in depth:
        t = torch.as_tensor(np.asarray(d, dtype=np.float32))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (k, h, w)
        maps.append(torch.nn.functional.interpolate(t[None], size=size, mode="nearest")[0])
    return torch.stack(maps)


def prepare_observations(policy, observations: list[dict], device: torch.device):
    """-> images (B, C, 3, h, w) uint8, lang list[str], state (B, S) normalized or None,
    geometry (B, C, k, h, w) or None, memory keys (episode_id, else the batch slot)."""
    if not observations:
        raise ValueError("predict_action needs at least one observation")
    size, cameras = tuple(policy.config.backbone.image_size), policy.config.backbone.cameras
    per_obs = [observation_images(o, size) for o in observations]
    counts = sorted({len(x) for x in per_obs})
    if cameras is not None and counts != [cameras]:
        raise ValueError(f"the policy was trained on {cameras} cameras per observation; these observations have "
                         f"{' and '.join(map(str, counts))} (framework.backbone.cameras, in the data's camera order)")
    if len(counts) > 1:
        raise ValueError(f"observations with {' and '.join(map(str, counts))} cameras in one call: give each the same")
    images = torch.stack(per_obs)  # (B, C, 3, h, w) on the host: the processor wants CPU
    lang = [str(o.get("lang", "")) for o in observations]
    state = None
    s_dim = policy.config.action_model.state_dim
    if s_dim:
        missing = [i for i, o in enumerate(observations) if o.get("state") is None]
        if missing:
            raise ValueError(f"observations {missing} have no 'state' but the policy has state_dim={s_dim}")
        raw = np.stack([np.asarray(o["state"], dtype=np.float64).reshape(-1) for o in observations])
        if raw.shape[1] != s_dim:
            raise ValueError(f"observation state has {raw.shape[1]} dims, the policy expects {s_dim}")
        norm = raw if policy.state_normalizer is None else policy.state_normalizer.normalize(raw)
        state = torch.as_tensor(norm, dtype=policy.head.action_out.weight.dtype, device=device)
    geos = [_geometry(o, size) for o in observations]
    geometry = None if any(g is None for g in geos) else torch.stack(geos).to(device)
    keys = [o.get("episode_id", i) for i, o in enumerate(observations)]
    return images, lang, state, geometry, keys


def sample_chunk(head, enc, state: torch.Tensor | None, residual: torch.Tensor, num_steps: int,
                 generator: torch.Generator | list[torch.Generator] | None = None, graphs: GraphCache | None = None):
    """Euler-integrate the flow from noise (t = 0) to actions (t = 1) -> (B, H, A) normalized, temb at t = 1.

    The noise is drawn here, from one generator for the batch or from one per row (a list of B);
    the integration (`integrate`) is a fixed computation of its
    tensors, which `graphs` replays as a CUDA graph on a GPU. The drift is skipped when the
    residual is zero everywhere (no memory yet): `DriftHead` maps a zero residual to exactly zero.
    """
    if num_steps < 1:
        raise ValueError(f"num_inference_timesteps must be >= 1, got {num_steps}")
    cfg = head.cfg
    b = enc.task_tokens.shape[0]
    # the head's weight dtype, not task_tokens': under autocast those are bf16, and so would be the
    # time grid (0.1 -> 0.10009765625) and the Euler state that sums all the steps
    dtype, device = head.action_out.weight.dtype, enc.task_tokens.device
    # noise is drawn where the generator lives (a CPU generator gives the same chunk on any device)
    shape = (cfg.action_horizon, cfg.action_dim)
    if isinstance(generator, list):
        if len(generator) != b:
            raise ValueError(f"{len(generator)} noise generators for a batch of {b}")
        x = torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=dtype).to(device) for g in generator])
    else:
        noise_device = generator.device if generator is not None else device
        x = torch.randn(b, *shape, generator=generator, device=noise_device, dtype=dtype)
    with_drift = bool(residual.any())  # one host read per call, against N drift evaluations
    dt = 1.0 / num_steps  # the time grid from the host: an exact 1.0 at the end, whatever the rounding of i * dt
    times = torch.tensor([i * dt for i in range(num_steps)] + [1.0], dtype=dtype).to(device)  # (E + 1,)
    fn = partial(integrate, head, num_steps, with_drift)
    inputs = (x.to(device), times, enc.mask, enc.observation, state, residual if with_drift else None,
              *enc.vl_embs_list)
    if graphs is None:
        return fn(*inputs)
    return graphs.run((num_steps, with_drift), head, fn, inputs)


def integrate(head, num_steps: int, with_drift: bool, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor,
              observation: torch.Tensor | None, state: torch.Tensor | None, residual: torch.Tensor | None,
              *vl_embs_list: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H, A) noise, times (E + 1,) the grid, mask (B, L), observation (B, W), state (B, S),
    residual (B, K, W) or None (no drift), one (B, L, D) VLM layer per DiT block
    -> actions (B, H, A), temb at t = 1 (B, W). Nothing here reads the host: a CUDA graph can hold it.

    What does not change from step to step is computed once: the DiT's cross-attention
    keys/values, and the time embeddings of all the steps (they depend on t alone), in one
    batched call."""
    b = x.shape[0]
    context = head.prepare_context(list(vl_embs_list), mask)  # cached for all steps
    dt = 1.0 / num_steps
    t_all = times.view(-1, 1).expand(num_steps + 1, b)  # (E + 1, B)
    temb_all = head.time(t_all.reshape(-1)).view(num_steps + 1, b, -1)  # (E + 1, B, W)
    cond_all = temb_all if observation is None else temb_all + observation  # (E + 1, B, W)
    for i in range(num_steps):
        v = head.velocity(context, x, cond_all[i], state)
        if with_drift:
            v = v + head.drift(residual, t_all[i], temb_all[i])
        x = x + dt * v
    return x, temb_all[-1]
