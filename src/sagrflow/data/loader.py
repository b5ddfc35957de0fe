"""The training input pipeline: endless, sharded, resumable batches of the mixture.

The mixture's draw for (epoch, index) is a pure function, so the loader only has to
hand out index positions: rank r of W takes blocks r, r+W, r+2W, ... of each epoch,
a block being one position, or one chain of `chain_length` positions.
The sampler yields `(epoch, index)` pairs, so persistent workers never depend on a
`set_epoch` call reaching their copy of the dataset. The position (epoch, batches
consumed) is all a checkpoint needs to continue exactly where a run stopped.
Workers are started by forkserver, never by a plain fork (see the DataLoader below).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Sampler

from sagrflow.core.batch import Batch
from sagrflow.data.collate import Tokenizer, collate
from sagrflow.data.config import VlaDataConfig
from sagrflow.data.mixtures import MixtureDataset


@dataclass
class LoaderPosition:
    epoch: int = 0
    batch: int = 0  # batches already consumed in this epoch, on this rank

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}


class _EpochSampler(Sampler):
    """Positions of one epoch for one rank, handed out in blocks (chains) that ranks never split."""

    def __init__(self, length: int, batch_size: int, rank: int, world_size: int, block: int = 1):
        self.length, self.batch_size, self.rank, self.world_size, self.block = length, batch_size, rank, world_size, block
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        blocks = self.length // (self.world_size * self.block)
        return blocks * self.block // self.batch_size  # drop_last: every batch is full

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.start_batch * self.batch_size
        last = self.batches_per_epoch() * self.batch_size
        for j in range(first, last):
            block, within = divmod(j, self.block)
            yield self.epoch, (self.rank + block * self.world_size) * self.block + within


def build_dataset(cfg: VlaDataConfig) -> MixtureDataset:
    return MixtureDataset(
        cfg.data_mix,
        cfg.data_root_dir,
        include_state=cfg.include_state,
        video_backend=cfg.video_backend,
        image_size=cfg.image_size,
        seed=cfg.seed,
        decoder_cache_size=cfg.decoder_cache_size,
        observation_indices=cfg.observation_indices,
        temporal_delta_k=cfg.temporal_delta_k,
        chain_length=cfg.chain_length,
    )


class TemporalLoader:
    """`for batch in loader:` runs forever, epoch after epoch; `position` says where it is."""

    def __init__(self, dataset: MixtureDataset, cfg: VlaDataConfig, *, rank: int = 0, world_size: int = 1,
                 tokenizer: Tokenizer | None = None, pin_memory: bool = False):
        if len(dataset) < world_size * cfg.per_device_batch_size:
            raise ValueError(f"the mix holds {len(dataset)} steps, fewer than one batch of "
                             f"{cfg.per_device_batch_size} on each of {world_size} ranks")
        self.dataset = dataset
        self.position = LoaderPosition()
        self._sampler = _EpochSampler(len(dataset), cfg.per_device_batch_size, rank, world_size, dataset.chain_length)
        workers = cfg.num_workers
        self._loader = DataLoader(
            dataset,
            batch_size=cfg.per_device_batch_size,
            sampler=self._sampler,
            num_workers=workers,
            collate_fn=partial(collate, tokenizer=tokenizer),
            pin_memory=pin_memory,
            drop_last=True,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # FFmpeg, x264/SVT and Arrow keep thread pools; a fork taken while one of their
            # threads holds a lock deadlocks the child. forkserver children start clean.
            multiprocessing_context="forkserver" if workers > 0 else None,
            # the DataLoader draws a worker base seed at every epoch start; its own generator keeps
            # that draw off the global torch RNG, which the model's noise sampling must own alone
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    @property
    def batches_per_epoch(self) -> int:
        return self._sampler.batches_per_epoch()

    def load_state_dict(self, state: dict) -> None:
        self.position = LoaderPosition(int(state["epoch"]), int(state["batch"]))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self.position.batch >= self.batches_per_epoch:
                self.position = LoaderPosition(self.position.epoch + 1, 0)
            self._sampler.epoch, self._sampler.start_batch = self.position.epoch, self.position.batch
            for batch in self._loader:
                self.position.batch += 1
                yield batch
