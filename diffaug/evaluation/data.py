"""In-memory labelled image sets for evaluation: real data and exported augmentation sets.

Both are read through :class:`diffaug.data.DiffusionDataModule`, so evaluation sees exactly the pixels
and the k-shot subset that training saw. Images are held as uint8 (small, and hashable exactly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffaug.augset import SetFormat, open_set, read_card
from diffaug.data import ClassMap, DiffusionDataModule, to_uint8

logger = logging.getLogger(__name__)

_LOAD_BATCH = 512


@dataclass(frozen=True)
class LabelledImages:
    """``images`` (N, C, H, W) uint8 with ``labels`` (N,) int64 indexing ``class_map``."""

    images: Tensor
    labels: Tensor
    class_map: ClassMap

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_map)):
            raise ValueError(f"labels must lie in [0, {len(self.class_map)}) for the class map")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_map)

    def class_counts(self) -> np.ndarray:
        """(num_classes,) images per class."""
        return np.bincount(self.labels.numpy(), minlength=self.num_classes)

    def subset(self, mask_or_index: Tensor) -> LabelledImages:
        return LabelledImages(self.images[mask_or_index], self.labels[mask_or_index], self.class_map)

    @staticmethod
    def concat(parts: Sequence[LabelledImages]) -> LabelledImages:
        """The images of ``parts`` in order, labelled in one class map: the parts' class names in order of first
        appearance (sets of one model share one map; sets of different models may each lack a class)."""
        if not parts:
            raise ValueError("concat needs at least one set")
        names: list[str] = []
        for part in parts:
            names.extend(name for name in part.class_map.names if name not in names)
        class_map = ClassMap(tuple(names))
        aligned = [part.aligned_to(class_map) for part in parts]
        shapes = {tuple(part.images.shape[1:]) for part in aligned}
        if len(shapes) > 1:
            raise ValueError(f"the sets to join have different image shapes {sorted(shapes)}; load them at one "
                             "resolution and channel count")
        return LabelledImages(torch.cat([p.images for p in aligned]), torch.cat([p.labels for p in aligned]), class_map)

    def content_hash(self) -> str:
        """SHA-256 of the pixels, labels and class names: the key of every cache derived from this set."""
        digest = hashlib.sha256()
        digest.update(json.dumps(list(self.class_map.names)).encode())
        digest.update(str(tuple(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.contiguous().numpy().astype("<i8").tobytes())
        return digest.hexdigest()

    def aligned_to(self, class_map: ClassMap) -> LabelledImages:
        """The same images with labels re-indexed into ``class_map`` (matched by class name)."""
        if class_map == self.class_map:
            return self
        unknown = [name for name in self.class_map.names if name not in class_map.names]
        if unknown:
            raise ValueError(
                f"classes {unknown} of this set are not among the real data's classes {list(class_map.names)}; "
                "evaluate against the data the model was trained on"
            )
        lookup = torch.tensor([class_map.index(name) for name in self.class_map.names], dtype=torch.int64)
        return LabelledImages(self.images, lookup[self.labels], class_map)


def _materialise(dataset: Dataset, class_map: ClassMap) -> LabelledImages:
    images: list[Tensor] = []
    labels: list[Tensor] = []
    for x, y in DataLoader(dataset, batch_size=_LOAD_BATCH, shuffle=False):
        images.append(to_uint8(x))  # (B, C, H, W) uint8; exact: the sources hold 8-bit pixels
        labels.append(y.to(torch.int64))
    if not images:
        raise ValueError("the data set is empty")
    return LabelledImages(torch.cat(images), torch.cat(labels), class_map)


def load_real(
    *,
    source: str,
    path: str | os.PathLike | None,
    split: Literal["train", "test"],
    resolution: int,
    channels: int,
    per_class_limit: int | None = None,
    seed: int = 0,
    max_items: int | None = None,
    class_names: list[str] | None = None,
) -> LabelledImages:
    """A real split. With ``per_class_limit`` = k and the training run's ``seed``, the k images per class
    are the ones the diffusion model was trained on (the data module's split does not depend on its
    validation fraction)."""
    module = DiffusionDataModule(
        source=source,  # type: ignore[arg-type]
        path=path,
        split=split,
        resolution=resolution,
        channels=channels,
        batch_size=1,
        val_fraction=0.0,
        per_class_limit=per_class_limit,
        seed=seed,
        max_items=max_items,
        class_names=class_names,
        shuffle_buffer=0,
    )
    module.setup("fit")
    data = _materialise(module.train_set, module.class_map)
    logger.info("loaded %d real %s images (%s)", len(data), split, source)
    return data


def load_export(
    export_dir: str | os.PathLike,
    *,
    resolution: int,
    channels: int,
    fmt: SetFormat = "auto",
    max_items: int | None = None,
) -> LabelledImages:
    """An exported augmentation set (folder or shards format, see :func:`diffaug.augset.open_set`), labelled
    with the exporter's class indices."""
    augmentation_set = open_set(export_dir, resolution=resolution, channels=channels, fmt=fmt,
                                max_items=max_items, batch_size=_LOAD_BATCH)
    return _materialise(augmentation_set.dataset, augmentation_set.class_map)


def check_export_training_data(
    export_dir: str | os.PathLike, *, source: str, k: int, seed: int, holdout: tuple[int, int]
) -> None:
    """Refuse a set whose model trained on other labelled images than the benchmark cell's k-shot subset
    (it would leak labels the cell does not have), or on the validation holdout. Sets without a dataset card
    (made elsewhere) pass unchecked."""
    card = read_card(export_dir)
    if card is None:
        return
    data = (card.get("config") or {}).get("data") or {}
    if not data:
        return
    trained = {
        "source": data.get("source"), "per_class_limit": data.get("per_class_limit"), "seed": data.get("seed"),
        "holdout_per_class": data.get("holdout_per_class"), "holdout_seed": data.get("holdout_seed", 0),
    }
    wanted = {"source": source, "per_class_limit": k, "seed": seed, "holdout_per_class": holdout[0],
              "holdout_seed": holdout[1]}
    wrong = {key: (trained[key], value) for key, value in wanted.items() if trained[key] != value}
    if wrong:
        detail = ", ".join(f"data.{key}={got!r} (the cell needs {need!r})" for key, (got, need) in wrong.items())
        raise ValueError(
            f"the augmentation set {export_dir} was made by a model trained with {detail}: its images could carry "
            f"labels or validation images the benchmark cell k={k}, seed={seed} does not have. Train one model per cell "
            "(data.per_class_limit=k, data.seed=seed, the same data.holdout_per_class) and point "
            "eval.downstream.synthetic at its export, with {k} and {seed} in the path"
        )
