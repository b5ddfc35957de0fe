"""Data-loader throughput: sagrflow's temporal loader against a naive per-frame decoder.

Both load the same LIBERO-shaped samples (2 cameras at t and t+k, 8x7 actions,
images resized to 224x224) from one generated dataset, through a torch DataLoader
with 1 and 2 workers. The naive baseline opens the mp4 anew for every frame and
decodes t and t+k separately, as a loader without a decoder cache does.

    python benchmarks/dataloader.py [--episodes 50] [--samples 384] [--codec h264] [--version v3.0]
                                    [--chain-length 4]

Prints samples/s (median of --repeats runs), samples/s per worker, and the ratio. Each
run starts fresh workers and times from the point where every worker has delivered a
batch, so each worker's loading of the packet tables falls inside the timed window. The
first sagrflow run reads them from the mp4s and saves them next to the dataset (as a
first epoch on new data does); the later runs load the saved tables, as every later
worker and training run does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from torch.utils.data import DataLoader

from sagrflow.data.collate import collate
from sagrflow.data.dataset import TemporalDataset
from sagrflow.data.embodiments import get_embodiment
from sagrflow.data.synthetic import write_synthetic


class NaiveTemporalDataset(TemporalDataset):
    """Same samples, but every frame opens its file, seeks and decodes on its own."""

    def _frames(self, episode: int, camera: str, frame_ids: np.ndarray) -> np.ndarray:
        video = self.reader.episodes[episode].videos[camera]
        ts = video.from_timestamp + self.reader.timestamps(episode)[frame_ids]
        return np.stack([naive_frame(video.path, float(t)) for t in ts])


def naive_frame(path, ts: float) -> np.ndarray:  # -> (h, w, 3) uint8
    """Open, seek to the keyframe before `ts`, decode up to it, close: PyAV's defaults throughout."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(ts / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time >= ts - 1e-3:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path}: no frame at {ts}")


def sample_order(dataset: TemporalDataset, n: int, chain_length: int, seed: int) -> list[int]:
    """n dataset indices: uniformly random steps, or chains t0, t0+k, ... in one episode, as
    MixtureDataset draws them with datasets.vla_data.chain_length."""
    rng = np.random.default_rng(seed)
    if chain_length == 1:
        return rng.permutation(len(dataset))[:n].tolist()
    k, out = dataset.embodiment.k, []
    while len(out) < n:
        episode, t0 = dataset.locate(int(rng.integers(len(dataset))))
        length, start = dataset.reader.episodes[episode].length, int(dataset.reader.episode_starts[episode])
        t0 = max(0, min(t0, length - 1 - (chain_length - 1) * k))
        out += [start + min(t0 + i * k, length - 1) for i in range(chain_length)]
    return out[:n]


def loader_throughput(dataset, order: list[int], batch_size: int, workers: int, collate_fn, warmup: int,
                      size=lambda batch: batch.batch_size) -> float:
    """Samples/s of a DataLoader over `order` after `warmup` batches (worker start-up and first
    opens are not throughput); `size(batch)` counts a batch's samples."""
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collate_fn,
        persistent_workers=False, prefetch_factor=4 if workers else None,
        multiprocessing_context="forkserver" if workers else None,  # as TemporalLoader does
    )
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = sum(size(b) for b in it)
    return n / (time.perf_counter() - start)


def samples_per_second(dataset, workers: int, samples: int, batch_size: int, seed: int, chain_length: int = 1) -> float:
    warmup = max(workers, 1)  # batch i comes from worker i % workers: one from each means all have started
    order = sample_order(dataset, samples + warmup * batch_size, chain_length, seed)
    return loader_throughput(dataset, order, batch_size, workers, collate, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--length", type=int, default=60, help="frames per episode")
    parser.add_argument("--image", type=int, default=256, help="stored image side (LIBERO: 256)")
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="runs per loader, interleaved; the median is printed")
    parser.add_argument("--codec", default="h264", choices=["h264", "av1"])
    parser.add_argument("--version", default="v2.1", choices=["v2.1", "v3.0"])
    parser.add_argument("--decoder-cache", type=int, default=64, help="open files kept per worker")
    parser.add_argument("--chain-length", type=int, default=1,
                        help="samples per chain t0, t0+k, ... (datasets.vla_data.chain_length); 1: independent samples")
    parser.add_argument("--root", type=Path, default=None, help="where to write the dataset (default: a temp dir)")
    args = parser.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="sagrflow-bench-")) / "libero_like"
    t0 = time.perf_counter()
    write_synthetic(root, [args.length] * args.episodes, video_codec=args.codec, version=args.version,
                    image_size=(args.image, args.image))
    print(f"dataset: {args.episodes} episodes x {args.length} frames, 2 cameras {args.image}px {args.codec} "
          f"{args.version}, decoder cache {args.decoder_cache} files/worker, chain length {args.chain_length}, written in {time.perf_counter() - t0:.1f}s -> {root}")
    emb = get_embodiment("libero_franka")  # (0, 7) observations, 8x7 actions, 224x224 images
    ours = TemporalDataset(root, emb, include_state=True, decoder_cache_size=args.decoder_cache)
    naive = NaiveTemporalDataset(root, emb, include_state=True)

    print(f"{'workers':>7} {'sagrflow s/s':>13} {'per worker':>11} {'naive s/s':>10} {'per worker':>11} {'ratio':>6}"
          "  ratio of each interleaved pair (min/median/max)")
    for workers in (1, 2):
        a, b = [], []
        for r in range(args.repeats):  # interleaved so drift in machine load hits both alike
            a.append(samples_per_second(ours, workers, args.samples, args.batch_size, r, args.chain_length))
            b.append(samples_per_second(naive, workers, args.samples, args.batch_size, r, args.chain_length))
        ma, mb = statistics.median(a), statistics.median(b)
        pairs = sorted(x / y for x, y in zip(a, b, strict=True))
        print(f"{workers:>7} {ma:>13.1f} {ma / workers:>11.1f} {mb:>10.1f} {mb / workers:>11.1f} {ma / mb:>5.2f}x"
              f"  {pairs[0]:.2f} / {statistics.median(pairs):.2f} / {pairs[-1]:.2f}")


if __name__ == "__main__":
    main()
