"""Map-style image sources, the registry that names them, and the dataset view that reads them."""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffaug.data.classmap import ClassMap
from diffaug.data.corrupt import CorruptDataError, CorruptionLog, UnreadableItem
from diffaug.data.transforms import ImageTransform
from diffaug.registry import Registry

logger = logging.getLogger(__name__)

# name -> source class; map-style sources subclass ImageSource, "shards" is an IterableDataset.
SOURCES: Registry[type] = Registry("data source")


def source_needs_path(name: str) -> bool:
    """Whether source ``name`` must be given a path: its constructor's ``path`` has no default."""
    path = inspect.signature(SOURCES.get(name)).parameters.get("path")
    return path is not None and path.default is inspect.Parameter.empty


class ImageSource(ABC):
    """Labelled images readable one at a time by index; labels are known without decoding any image."""

    @property
    @abstractmethod
    def class_map(self) -> ClassMap: ...

    @property
    @abstractmethod
    def targets(self) -> np.ndarray:
        """(N,) int64 class index of every item."""

    @abstractmethod
    def load(self, i: int) -> Image.Image:
        """Decode item i; raises UnreadableItem when its data is corrupt."""

    def __len__(self) -> int:
        return len(self.targets)


class SourceView(Dataset):
    """The items ``indices`` of a source as (image (C, H, W) in [-1, 1], label) pairs.

    An unreadable item is reported to ``corruption``; with on_corrupt="skip" the next readable item of
    the same class in this view stands in, so batches keep their size, class balance is kept and no
    item from outside the view (e.g. the validation split) leaks in.
    """

    def __init__(
        self,
        source: ImageSource,
        indices: np.ndarray,
        *,
        transform: ImageTransform,
        corruption: CorruptionLog,
        unlabelled: bool = False,
    ):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.corruption = corruption
        self.unlabelled = unlabelled
        # Unlabelled: every item is class 0 of the single-class map, and no label is read at all.
        self._labels = np.zeros(len(self.indices), np.int64) if unlabelled else source.targets[self.indices]

    @property
    def class_map(self) -> ClassMap:
        return ClassMap.unlabelled() if self.unlabelled else self.source.class_map

    @property
    def targets(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        for j in self._candidates(i):
            try:
                image = self.source.load(int(self.indices[j]))
            except UnreadableItem as error:
                self.corruption.report(error.where, error.problem)  # raises for on_corrupt="fail"
                continue
            return self.transform(image), int(self._labels[j])
        raise CorruptDataError(
            f"none of the {len(self)} items of this split could be read (see the warnings above for each "
            "file); check the data path"
        )

    def _candidates(self, i: int):
        """i first, then the rest of the view in cyclic order, same class before other classes."""
        yield i
        order = (np.arange(1, len(self)) + i) % len(self)
        same = self._labels[order] == self._labels[i]
        yield from order[same]
        yield from order[~same]


def select_indices(
    targets: np.ndarray,
    *,
    num_classes: int,
    val_fraction: float,
    per_class_limit: int | None,
    max_items: int | None,
    seed: int,
    holdout_per_class: int | None = None,
    holdout_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split, stratified by class.

    Each class is permuted with ``seed``; its validation items come from the end of the permutation and
    its ``per_class_limit`` training items from the front, so the k-shot training set for a seed does not
    change with val_fraction, and the k-shot set of a seed is the front of its 2k-shot set.
    ``max_items`` then caps each split (a seeded subset, sorted).

    ``holdout_per_class`` items per class (chosen by ``holdout_seed`` alone) are removed first and never
    reach either split: the downstream benchmark's validation images (:func:`holdout_indices`), kept out of
    diffusion training whatever the run's ``seed``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"labels range over [{targets.min()}, {targets.max()}] but there are only {num_classes} class "
            "names; pass class_names with one name per label"
        )
    held = holdout_indices(targets, num_classes=num_classes, per_class=holdout_per_class, seed=holdout_seed)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in range(num_classes):
        members = np.flatnonzero(targets == c)
        if len(held):
            members = members[~np.isin(members, held)]
        members = rng.permutation(members)
        n_val = min(int(round(val_fraction * len(members))), max(len(members) - 1, 0))
        val.append(members[len(members) - n_val :])
        rest = members[: len(members) - n_val]
        if per_class_limit is not None:
            if len(rest) < per_class_limit:
                logger.warning(
                    "class %d has only %d training items, fewer than per_class_limit=%d; using all of them",
                    c,
                    len(rest),
                    per_class_limit,
                )
            rest = rest[:per_class_limit]
        train.append(rest)
    cap_rng = np.random.default_rng([seed, 1])
    return (
        _capped(np.concatenate(train), max_items, cap_rng),
        _capped(np.concatenate(val), max_items, cap_rng),
    )


def holdout_indices(
    targets: np.ndarray, *, num_classes: int, per_class: int | None, seed: int
) -> np.ndarray:
    """(num_classes * per_class,) sorted indices: ``per_class`` items of every class drawn with ``seed``.

    A class with no more than ``per_class`` items would lose all of them: that is refused, naming the class.
    """
    if per_class is None or per_class == 0:
        return np.zeros(0, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng([seed, 2])  # a stream of its own: independent of every run seed
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(targets == c)
        if len(members) <= per_class:
            raise ValueError(
                f"class {c} has {len(members)} items, not more than holdout_per_class={per_class}: nothing would "
                "be left to train on; lower data.holdout_per_class"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _capped(indices: np.ndarray, max_items: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_items is not None and len(indices) > max_items:
        indices = rng.permutation(indices)[:max_items]
    return np.sort(indices).astype(np.int64)
