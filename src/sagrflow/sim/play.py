"""Watching rollouts: both cameras side by side, the instruction on top, saved as mp4.

`write_rollout_video` takes any list of observations (the expert's here, a policy's in
closed-loop evaluation); `play_expert` rolls the expert out on tasks and films it.

Legend: h/w camera image size, s the upscaling factor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagrflow.sim.env import SimConfig, SimEnv
from sagrflow.sim.expert import ScriptedExpert

_CAPTION = 30  # caption bar height in output pixels
_GAP = 4  # pixels between the two cameras


def compose_frame(obs: dict, caption: str, status: str, scale: int = 3, ok: bool = False) -> np.ndarray:
    """(h*s + caption, 2*w*s + gap, 3) uint8: agent view | wrist view, caption bar above."""
    from PIL import Image, ImageDraw

    views = [np.repeat(np.repeat(obs[k], scale, axis=0), scale, axis=1) for k in ("image", "wrist_image")]  # (h*s, w*s, 3)
    h, w = views[0].shape[:2]
    frame = np.full((h + _CAPTION, 2 * w + _GAP, 3), 24, np.uint8)
    frame[_CAPTION:, :w] = views[0]
    frame[_CAPTION:, w + _GAP:] = views[1]
    canvas = Image.fromarray(frame)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), caption, fill=(235, 235, 235))
    draw.text((4, 15), status, fill=(90, 220, 90) if ok else (200, 200, 200))
    return np.asarray(canvas)


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Encode (H, W, 3) uint8 frames as an h264 mp4 (odd sizes are padded to even)."""
    import av

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    eh, ew = h + h % 2, w + w % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = eh, ew, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for i, img in enumerate(frames):
            if (eh, ew) != (h, w):
                img = np.pad(img, ((0, eh - h), (0, ew - w), (0, 0)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def film(observations: list[dict], instruction: str, label: str = "", success: bool | None = None,
         scale: int = 3, hold: int = 5) -> list[np.ndarray]:
    """Frames of one rollout; the last is repeated `hold` more times so the outcome can be seen."""
    frames = []
    for t, obs in enumerate(observations):
        last = t == len(observations) - 1
        status = f"{label}  step {t}".strip()
        if last and success is not None:
            status += "  SUCCESS" if success else "  failure"
        frames.append(compose_frame(obs, instruction, status, scale, ok=last and bool(success)))
    return frames + [frames[-1]] * hold


def write_rollout_video(observations: list[dict], instruction: str, path: str | Path, label: str = "",
                        success: bool | None = None, fps: int = 10, scale: int = 3) -> Path:
    """Film one rollout (an expert's or a policy's) to an mp4."""
    return write_video(film(observations, instruction, label, success, scale, hold=fps), path, fps)


def expert_rollout(env: SimEnv, seed: int, noise: float = 0.0) -> tuple[list[dict], bool]:
    """All observations of one expert episode from `seed` (the final one included) and its success."""
    expert = ScriptedExpert(noise=noise, seed=seed)
    obs, info = env.reset(seed=seed)
    observations = [obs]
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(env))
        observations.append(obs)
        done = terminated or truncated
    return observations, bool(info["success"])


def play_expert(tasks: list[str], out: str | Path, seeds: list[int], noise: float = 0.0, image_size: int = 128,
                scale: int = 3, fps: int = 10) -> list[tuple[str, int, bool]]:
    """One mp4 of the expert doing every task in `tasks` from every seed, in sequence.

    Returns (task, seed, success) per episode.
    """
    frames: list[np.ndarray] = []
    results = []
    for name in tasks:
        env = SimEnv(name, SimConfig(image_size=image_size))
        for seed in seeds:
            observations, success = expert_rollout(env, seed, noise)
            results.append((name, seed, success))
            frames += film(observations, env.instruction, f"{name}  seed {seed}", success, scale, hold=fps // 2)
    write_video(frames, out, fps)
    return results
