"""LightningDataModule over every data source: folder, shards, idx, sklearn_digits."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from diffaug.data.base import SOURCES, ImageSource, SourceView, select_indices, source_needs_path
from diffaug.data.classmap import ClassMap
from diffaug.data.corrupt import CorruptionLog, OnCorrupt, check_on_corrupt
from diffaug.data.shards import MANIFEST_FILE, ShardDataset
from diffaug.data.transforms import ImageTransform, pil_mode_for

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]


def _check_optional_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class DiffusionDataModule(pl.LightningDataModule):
    """Batches ``(images (N, C, H, W) float32 in [-1, 1], labels (N,) int64)`` for diffusion training.

    Map-style sources (folder, idx, sklearn_digits) get a deterministic, class-stratified validation
    split (``val_fraction``) and optional k-shot subsetting (``per_class_limit``), both seeded by
    ``seed``. diffaug's training wraps this module in ``diffaug.training.data.ResumableDataModule``, whose
    sampler splits them by rank (Lightning's DistributedSampler is off there, so that a resume repeats the
    order); only a Trainer of your own would add one to these loaders. Shards stream through webdataset
    with rank- and worker-disjoint shard assignment; their validation data comes from ``val_path``.
    ``rank`` / ``world_size`` override torch.distributed for the shard split (custom launchers, tests).
    """

    def __init__(
        self,
        *,
        source: str = "sklearn_digits",  # a name from SOURCES
        path: str | os.PathLike | None = None,
        split: Split = "train",
        resolution: int = 16,
        channels: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        val_path: str | os.PathLike | None = None,
        on_corrupt: OnCorrupt = "skip",
        hflip: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        per_class_limit: int | None = None,
        holdout_per_class: int | None = None,
        holdout_seed: int = 0,
        unlabelled: bool = False,
        class_names: Sequence[str] | None = None,
        max_items: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.source_cls = SOURCES.get(source)  # KeyError listing the valid sources
        if split not in get_args(Split):
            raise ValueError(f"split={split!r} is not valid; choose one of {list(get_args(Split))}")
        pil_mode_for(channels)  # validates channels
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0, got {shuffle_buffer!r}")
        _check_optional_positive("per_class_limit", per_class_limit)
        _check_optional_positive("holdout_per_class", holdout_per_class)
        _check_optional_positive("max_items", max_items)
        if unlabelled and per_class_limit is not None:
            raise ValueError("unlabelled data has no classes to take per_class_limit images of; drop one of the two")
        if source == "shards":
            if unlabelled:
                raise ValueError("unlabelled=True needs a map-style source (folder, idx, sklearn_digits); shards "
                                 "carry their own labels: write them with a single class instead")
            if path is None:
                raise ValueError("source='shards' needs path: a shard directory, pattern or pipe: command")
            if per_class_limit is not None or holdout_per_class is not None:
                raise ValueError(
                    "per_class_limit and holdout_per_class need a map-style source (folder, idx, sklearn_digits); streamed shards "
                    "cannot pick k items per class deterministically, so export the k-shot subset instead"
                )
        elif val_path is not None:
            raise ValueError(
                f"val_path is for source='shards'; source={source!r} splits off val_fraction instead"
            )
        if path is None and source_needs_path(source):
            raise ValueError(f"source={source!r} needs path")
        self.source = source
        self.path = path
        self.split = split
        self.resolution = resolution
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.val_path = val_path
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.hflip = hflip
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.per_class_limit = per_class_limit
        self.holdout_per_class = holdout_per_class
        self.holdout_seed = holdout_seed
        self.unlabelled = unlabelled
        self.class_names = None if class_names is None else tuple(class_names)
        self.max_items = max_items
        self.rank = rank
        self.world_size = world_size
        self.corruption = CorruptionLog(self.on_corrupt)
        self._source: ImageSource | ShardDataset | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    # ------------------------------------------------------------------------------ classes

    def _get_source(self) -> ImageSource | ShardDataset:
        """The split's source; constructing one reads no image (folder listing / JSON / labels only)."""
        if self._source is None:
            if self.source == "shards":
                self._source = self._shards(self.path, train=True)
            else:
                self._source = self.source_cls(path=self.path, split=self.split, class_names=self.class_names)
        return self._source

    @property
    def class_map(self) -> ClassMap:
        return ClassMap.unlabelled() if self.unlabelled else self._get_source().class_map

    @property
    def num_classes(self) -> int:
        return len(self.class_map)

    # ------------------------------------------------------------------------------ corrupt data

    @property
    def corrupt_count(self) -> int:
        """Distinct corrupt files / shards / samples skipped so far (on_corrupt="skip"), all workers."""
        return self.corruption.count

    @property
    def skipped_files(self) -> list[str]:
        return self.corruption.skipped

    # ------------------------------------------------------------------------------ datasets

    def _transform(self, *, train: bool) -> ImageTransform:
        return ImageTransform(resolution=self.resolution, channels=self.channels, hflip=self.hflip and train)

    def _shards(self, path: str | os.PathLike, *, train: bool) -> ShardDataset:
        return ShardDataset(
            path=path,
            transform=self._transform(train=train),
            corruption=self.corruption,
            class_names=self.class_names,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            batch_size=self.batch_size,
            max_items=self.max_items,
            rank=self.rank,
            world_size=self.world_size,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        source = self._get_source()
        if isinstance(source, ShardDataset):
            total = source.num_samples  # from the manifest; without one an empty epoch cannot be foreseen
            if total is not None and min(total, self.max_items or total) < self.batch_size:
                raise ValueError(
                    f"the shards {self.path} hold {total} samples (by their {MANIFEST_FILE}), fewer than "
                    f"batch_size={self.batch_size}, so no full batch exists; lower batch_size"
                )
            self.train_set = source
            if self.val_path is not None:
                self.val_set = self._shards(self.val_path, train=False)
                if self.val_set.class_map != source.class_map:
                    raise ValueError(
                        f"validation shards {self.val_path} have classes {self.val_set.class_map.names} but "
                        f"the training shards have {source.class_map.names}"
                    )
            elif self.val_fraction > 0:
                logger.warning(
                    "val_fraction=%s is ignored for shards, which cannot be split without reading them; "
                    "pass val_path for validation",
                    self.val_fraction,
                )
            return
        train_idx, val_idx = select_indices(
            source.targets,
            num_classes=len(source.class_map),
            val_fraction=self.val_fraction,
            per_class_limit=self.per_class_limit,
            max_items=self.max_items,
            seed=self.seed,
            holdout_per_class=self.holdout_per_class,
            holdout_seed=self.holdout_seed,
        )
        if len(train_idx) < self.batch_size:
            raise ValueError(
                f"the training split has {len(train_idx)} items, fewer than batch_size={self.batch_size}, so "
                "no full batch exists; lower batch_size (or raise per_class_limit / max_items)"
            )
        self.train_set = SourceView(
            source, train_idx, transform=self._transform(train=True), corruption=self.corruption,
            unlabelled=self.unlabelled,
        )
        if len(val_idx):
            self.val_set = SourceView(
                source, val_idx, transform=self._transform(train=False), corruption=self.corruption,
                unlabelled=self.unlabelled,
            )
        logger.info("%s data: %d training and %d validation items", self.source, len(train_idx), len(val_idx))

    # ------------------------------------------------------------------------------ loaders

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        iterable = isinstance(dataset, IterableDataset)
        generator = None if iterable or not train else torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and not iterable,  # shards shuffle inside the stream
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_set is None:
            return []  # Lightning: no validation batches
        return self._loader(self.val_set, train=False)
