"""A resumable data order on top of the data module.

Lightning restores a data loader mid-epoch only when the loader is *stateful* (``state_dict`` /
``load_state_dict``; it saves the state inside the loop state of every checkpoint) and a plain ``DataLoader``
is not, so a run resumed mid-epoch would see a different order than a run that never stopped. Here the order
of epoch e is a pure function of (seed, e), split across ranks, and the loader's state is "epoch e, k batches
done", so a resumed run skips exactly the batches it already trained on.

k must count the batches the model consumed, not the ones the loader produced: Lightning fetches one batch
ahead. :class:`DataPositionCallback` therefore records k from the training loop's own batch index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

logger = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixing the parts well (nearby inputs give unrelated seeds): the seeds of training's
    random streams (data order, per-step draws). Not ``diffaug.sampling``'s per-image seeds, which are
    recorded in exported sets and computed differently."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of ``num_items`` indices in an order fixed by (seed, epoch), split across ranks.

    Every epoch is ``ceil(num_items / (batch_size * world_size))`` global batches; the permutation wraps
    around to fill the last one, so every item is seen at least once per epoch, every batch is full (constant
    EMA and throughput accounting) and every rank has the same number of batches (DDP needs that). Global
    batch b holds permutation positions [b G, (b + 1) G), G = batch_size * world_size; rank r takes the r-th
    slice of it.
    """

    def __init__(self, num_items: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError(f"the training set is empty (num_items={num_items}); check the data config")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0  # batches of self.epoch already consumed before a resume

    def __len__(self) -> int:
        return -(-self.num_items // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def resume_at(self, *, epoch: int, batches_done: int) -> None:
        """The next iteration yields epoch ``epoch`` from batch ``batches_done`` on."""
        if batches_done >= len(self):  # the checkpoint closed an epoch: start the next one
            epoch, batches_done = epoch + 1, 0
        self.epoch, self._skip = epoch, batches_done

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(num_batches * G,) item indices of the whole epoch, all ranks."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        permutation = torch.randperm(self.num_items, generator=generator)
        total = len(self) * self.batch_size * self.world_size
        return permutation.repeat(-(-total // self.num_items))[:total]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        order = self.epoch_order(epoch).view(len(self), self.world_size, self.batch_size)  # (B, W, bs)
        for b in range(skip, len(self)):
            yield order[b, self.rank].tolist()


class ResumableLoader:
    """A DataLoader over a map-style dataset with a :class:`ResumableBatchSampler`, stateful for Lightning."""

    def __init__(self, dataset: Dataset, *, batch_sampler: ResumableBatchSampler, num_workers: int,
                 pin_memory: bool):
        self.batch_sampler = batch_sampler
        self.batches_done = 0  # of the current epoch, set by DataPositionCallback
        self.loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": self.batches_done,
                "num_batches": len(self.batch_sampler)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_batches", len(self)) != len(self):
            logger.warning(
                "the checkpoint's epochs had %d batches, now %d (data, batch size or device count changed); "
                "the data order continues from the saved epoch but not batch for batch",
                state["num_batches"], len(self),
            )
        self.batches_done = state["batches_done"]
        self.batch_sampler.resume_at(epoch=state["epoch"], batches_done=state["batches_done"])


class DataPositionCallback(pl.Callback):
    """Tells the resumable loader the epoch and how many of its batches the model has consumed."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last), so the saved
        # position includes this batch.
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.batches_done = batch_idx + 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before the epoch's iterator is created (and not at all when a run resumes mid-epoch).
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.batch_sampler.set_epoch(trainer.current_epoch)
            loader.batches_done = 0


class ResumableDataModule(pl.LightningDataModule):
    """Wraps a data module: map-style training data gets the resumable order; validation is split by rank.

    Streamed (iterable) training data passes through unchanged: it is split by rank inside the stream, and a
    mid-epoch resume restarts its epoch (Lightning warns about it).
    """

    def __init__(self, inner: pl.LightningDataModule, *, seed: int):
        super().__init__()
        self.inner = inner
        self.seed = seed

    @property
    def class_map(self):
        return self.inner.class_map

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _pin_memory(self) -> bool:
        # Page-locked batches copy to a GPU asynchronously; pointless (and extra memory) on a CPU run.
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> Any:
        self.inner.setup("fit")
        dataset = self.inner.train_set
        if isinstance(dataset, IterableDataset):
            return self.inner.train_dataloader()
        rank, world_size = self._rank_world()
        sampler = ResumableBatchSampler(len(dataset), batch_size=self.inner.batch_size, seed=self.seed,
                                        rank=rank, world_size=world_size)
        return ResumableLoader(dataset, batch_sampler=sampler, num_workers=self.inner.num_workers,
                               pin_memory=self._pin_memory())

    def val_dataloader(self) -> Any:
        self.inner.setup("validate")
        dataset = self.inner.val_set
        rank, world_size = self._rank_world()
        if dataset is None or isinstance(dataset, IterableDataset) or world_size == 1:
            return self.inner.val_dataloader()
        # Each rank evaluates its own strided share; Lightning averages the logged means across ranks.
        share = Subset(dataset, range(rank, len(dataset), world_size))
        return DataLoader(share, batch_size=self.inner.batch_size, shuffle=False,
                          num_workers=self.inner.num_workers, persistent_workers=self.inner.num_workers > 0,
                          pin_memory=self._pin_memory())
