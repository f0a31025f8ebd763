"""The real images a checkpoint was trained on: class counts (for quota modes) and reference images
(for the near-duplicate check), read through the project's data module."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from diffaug.config import ConfigError
from diffaug.data import ClassMap, DiffusionDataModule

log = logging.getLogger(__name__)


def training_datamodule(data: Mapping[str, Any]) -> DiffusionDataModule:
    """The training split as the run saw it (same source, split, k-shot subset and seed), unflipped,
    read in one piece by this process (not split across ranks)."""
    return DiffusionDataModule(
        source=data["source"],
        path=data.get("path"),
        split=data.get("split", "train"),
        resolution=int(data["resolution"]),
        channels=int(data["channels"]),
        batch_size=1,
        num_workers=int(data.get("num_workers") or 0),  # one pass to count or compare: no workers
        val_fraction=float(data.get("val_fraction", 0.0)),
        val_path=data.get("val_path"),
        on_corrupt=data.get("on_corrupt", "skip"),
        hflip=False,
        shuffle_buffer=0,
        seed=int(data.get("seed", 0)),
        per_class_limit=data.get("per_class_limit"),
        holdout_per_class=data.get("holdout_per_class"),
        holdout_seed=int(data.get("holdout_seed", 0)),
        unlabelled=bool(data.get("unlabelled", False)),
        class_names=data.get("class_names"),
        max_items=data.get("max_items"),
        rank=0,
        world_size=1,
    )


def _check_classes(dm: DiffusionDataModule, class_map: ClassMap) -> None:
    if tuple(dm.class_map.names) != tuple(class_map.names):
        raise ConfigError(
            f"the training data at {dm.path} now has classes {list(dm.class_map.names)}, but the checkpoint "
            f"was trained on {list(class_map.names)}; point data.path at the original data"
        )


def real_class_counts(data: Mapping[str, Any], class_map: ClassMap) -> dict[str, int]:
    """Training images per class name."""
    dm = training_datamodule(data)
    _check_classes(dm, class_map)
    dm.setup("fit")
    targets = getattr(dm.train_set, "targets", None)
    if targets is not None:  # map-style sources know their labels without decoding images
        counts = torch.bincount(torch.as_tensor(targets, dtype=torch.int64), minlength=len(class_map))
    else:  # streamed shards: read them once
        counts = torch.zeros(len(class_map), dtype=torch.int64)
        for _, labels in DataLoader(dm.train_set, batch_size=256):
            counts += torch.bincount(labels, minlength=len(class_map))
    log.info("real training images per class: %s", dict(zip(class_map.names, counts.tolist(), strict=True)))
    return dict(zip(class_map.names, counts.tolist(), strict=True))


def reference_images(data: Mapping[str, Any], class_map: ClassMap) -> Tensor:
    """(M, C, H, W) training images in [-1, 1]."""
    dm = training_datamodule(data)
    _check_classes(dm, class_map)
    dm.setup("fit")
    batches = [images for images, _ in DataLoader(dm.train_set, batch_size=256)]
    if not batches:
        raise ConfigError(f"the training data {data.get('source')}:{data.get('path')} holds no images")
    return torch.cat(batches)


def training_images_by_class(data: Mapping[str, Any], class_map: ClassMap) -> list[Tensor]:
    """Per checkpoint class: its training images (N_c, C, H, W) in [-1, 1], in the data module's order
    (the same k-shot subset and holdout the run saw)."""
    dm = training_datamodule(data)
    _check_classes(dm, class_map)
    dm.setup("fit")
    per_class: list[list[Tensor]] = [[] for _ in class_map.names]
    for images, labels in DataLoader(dm.train_set, batch_size=256):
        for image, label in zip(images, labels.tolist(), strict=True):
            per_class[label].append(image)
    shape = (0, int(data["channels"]), int(data["resolution"]), int(data["resolution"]))
    return [torch.stack(images) if images else torch.empty(shape) for images in per_class]


def folder_images(root: str, *, resolution: int, channels: int) -> Tensor:
    """(M, C, H, W) every image under ``root`` (any class layout) in [-1, 1], at the model's size."""
    from diffaug.data import FolderSource, ImageTransform

    source = FolderSource(path=root)
    transform = ImageTransform(resolution=resolution, channels=channels)
    return torch.stack([transform(source.load(i)) for i in range(len(source))])
