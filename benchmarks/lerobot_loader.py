"""Data-loader throughput: sagrflow's TemporalDataset against LeRobot's own LeRobotDataset.

Both read the same generated LeRobot v3.0 dataset (LIBERO-shaped: 2 cameras, 8-d state,
7-d action, >= 50 episodes in shared mp4/parquet files) and emit the same temporal sample:
both cameras at t and t+k (LeRobot: `delta_timestamps` [0, k/fps]), state at t and t+k,
the action chunk t..t+7. Same sample order, batch size, DataLoader workers (1 and 2),
prefetch and start method, same video decoder (`--video-backend`), and the same resize to
`--resize` px (sagrflow: in its workers on uint8; LeRobot: a torchvision Resize as its
`image_transforms`, on the frames it returns: float32 in [0, 1] in 0.4, uint8 where its
LeRobotDataset takes `return_uint8`, as 0.6's does); `--resize 0` keeps the stored size.
Before timing, a few samples of each are decoded and checked to be the same frames.

It needs LeRobot, which lives in a side environment (README, "Against LeRobot"):

    /work/lerobot-venv/bin/python benchmarks/lerobot_loader.py [--episodes 60] [--samples 384] [--repeats 3]

Prints samples/s of each (median of interleaved runs) and the ratio sagrflow / LeRobot.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import default_collate

from dataloader import loader_throughput  # benchmarks/ is on sys.path when run as a script
from sagrflow.data.collate import collate
from sagrflow.data.dataset import TemporalDataset
from sagrflow.data.embodiments import get_embodiment
from sagrflow.data.synthetic import decode_id_image, write_synthetic

SETUP = "set up the side environment of README.md, section 'Against LeRobot', and run this script with its python"


def lerobot_dataset_class():
    """LeRobotDataset (0.4+ layout, else the older lerobot.common one); exits 2 when LeRobot is missing."""
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as first:
        try:
            from lerobot.common.datasets.lerobot_dataset import LeRobotDataset
        except ImportError:
            print(f"lerobot is not importable with {sys.executable} ({first}).\n{SETUP}.", file=sys.stderr)
            raise SystemExit(2) from None
    return LeRobotDataset


def make_lerobot(root: Path, k: int, horizon: int, fps: int, backend: str, resize: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local dataset: never ask the hub
    transforms = None
    if resize:
        from torchvision.transforms import v2

        transforms = v2.Resize((resize, resize), antialias=True)
    cameras = ("observation.images.image", "observation.images.wrist_image")
    delta = {c: [0.0, k / fps] for c in cameras}
    delta["observation.state"] = [0.0, k / fps]
    delta["action"] = [i / fps for i in range(horizon)]
    cls = lerobot_dataset_class()
    # LeRobot 0.6 can hand out uint8 frames, as sagrflow does; 0.4 returns float32 in [0, 1]
    extra = {"return_uint8": True} if "return_uint8" in inspect.signature(cls).parameters else {}
    return cls("local/libero_like", root=root, delta_timestamps=delta, image_transforms=transforms,
               video_backend=backend, **extra)


def _uint8(frame) -> np.ndarray:  # LeRobot's (3, h, w) frame, float in [0, 1] or uint8
    x = frame.numpy()
    return x if x.dtype == np.uint8 else (x * 255).round().astype(np.uint8)


def same_samples(ours: TemporalDataset, theirs, indices: list[int]) -> None:
    """The frames at t and t+k and the action rows are the same ones in both (ids drawn in the pixels)."""
    for i in indices:
        a, b = ours[i], theirs[i]
        for cam, key in enumerate(("observation.images.image", "observation.images.wrist_image")):
            got_ours = [decode_id_image(a[f][cam].numpy()) for f in ("image_t", "image_tk")]
            got_theirs = [decode_id_image(_uint8(b[key][j])) for j in range(2)]
            if got_ours != got_theirs:
                raise SystemExit(f"sample {i}, camera {cam}: sagrflow frames {got_ours} != LeRobot {got_theirs}")
        pos, t = ours.locate(i)  # synthetic_episode: action[:, 0] = frame, action[:, 1] = episode
        frames = np.minimum(t + np.arange(len(b["action"])), ours.reader.episodes[pos].length - 1)
        if not (np.array_equal(b["action"][:, 0].numpy(), frames) and bool((b["action"][:, 1] == pos).all())):
            raise SystemExit(f"sample {i}: action rows differ")


def samples_per_second(dataset, collate_fn, workers: int, samples: int, batch_size: int, seed: int) -> float:
    """Samples/s after the first batch (worker start-up and first decodes are not throughput)."""
    order = np.random.default_rng(seed).permutation(len(dataset))[: samples + batch_size]
    return loader_throughput(dataset, order.tolist(), batch_size, workers, collate_fn, warmup=1,
                             size=lambda b: len(b["index"]) if isinstance(b, dict) else b.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--length", type=int, default=100, help="frames per episode")
    parser.add_argument("--image", type=int, default=256, help="stored image side (LIBERO: 256)")
    parser.add_argument("--resize", type=int, default=224, help="side both loaders resize to (0: keep the stored size)")
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--video-backend", default="torchcodec", choices=["torchcodec", "pyav"])
    parser.add_argument("--root", type=Path, default=None, help="where to write the dataset (default: a temp dir)")
    args = parser.parse_args()
    lerobot_dataset_class()  # fail fast, before writing anything

    import lerobot

    root = args.root or Path(tempfile.mkdtemp(prefix="sagrflow-bench-lerobot-")) / "libero_like"
    t0 = time.perf_counter()
    write_synthetic(root, [args.length] * args.episodes, video_codec="h264", version="v3.0",
                    image_size=(args.image, args.image))
    emb = get_embodiment("libero_franka", image_size=(args.resize or args.image,) * 2)
    ours = TemporalDataset(root, emb, include_state=True, video_backend=args.video_backend)
    ours.normalizers  # computed once here, not in every worker  # noqa: B018
    theirs = make_lerobot(root, emb.k, emb.horizon, ours.reader.meta.fps, args.video_backend, args.resize)
    same_samples(ours, theirs, [0, 5, args.length - 3, len(ours) - 1, len(ours) // 2 + 17])
    print(f"dataset: v3.0, {args.episodes} episodes x {args.length} frames, 2 cameras {args.image}px h264 -> "
          f"{args.resize or args.image}px, k={emb.k}, H={emb.horizon}, written in {time.perf_counter() - t0:.1f}s -> {root}")
    print(f"lerobot {lerobot.__version__}, decoder {args.video_backend}, batch {args.batch_size}, "
          f"{args.samples} samples per run, median of {args.repeats} interleaved runs; same samples checked")
    print(f"{'workers':>7} {'sagrflow s/s':>13} {'LeRobot s/s':>12} {'ratio':>6}")
    for workers in (int(w) for w in args.workers.split(",")):
        a, b = [], []
        for r in range(args.repeats):  # interleaved so drift in machine load hits both alike
            a.append(samples_per_second(ours, collate, workers, args.samples, args.batch_size, seed=r))
            b.append(samples_per_second(theirs, default_collate, workers, args.samples, args.batch_size, seed=r))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{workers:>7} {ma:>13.1f} {mb:>12.1f} {ma / mb:>5.2f}x")


if __name__ == "__main__":
    main()
