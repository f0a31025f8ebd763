"""Reading a finished augmentation set back, in either format, with the exporter's class indices.

Class folders carry sanitised names; ``classes.json`` beside them gives the real names in class order, so
labels follow the exporter's class indices, not the folders' alphabetical order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.utils.data import Dataset

from diffaug.augset.layout import CARD_JSON, CLASSES_JSON, IMAGES_DIR, SHARDS_DIR
from diffaug.augset.names import sanitize_class_names
from diffaug.data import ClassMap, DiffusionDataModule

SetFormat = Literal["auto", "folder", "shards"]


@dataclass(frozen=True)
class AugmentationSet:
    """``dataset`` yields (image (C, H, W) in [-1, 1], label) with labels indexing ``class_map``."""

    root: Path
    format: str
    dataset: Dataset
    class_map: ClassMap


class _Relabelled(Dataset):
    """A map-style dataset whose label ``j`` becomes ``lookup[j]``."""

    def __init__(self, dataset: Dataset, lookup: list[int]):
        self.dataset, self.lookup = dataset, lookup

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return image, self.lookup[int(label)]


def read_card(root: str | os.PathLike) -> dict[str, Any] | None:
    """The set's dataset card, or None for a set without one (made elsewhere, or unfinished)."""
    card = Path(root) / CARD_JSON
    return json.loads(card.read_text()) if card.is_file() else None


def open_set(
    root: str | os.PathLike,
    *,
    resolution: int,
    channels: int,
    fmt: SetFormat = "auto",
    max_items: int | None = None,
    batch_size: int = 1,
) -> AugmentationSet:
    """A finished set: ``images/<class folder>/`` (folder format) or ``shards/``, at the given image size.

    ``fmt="auto"`` reads the folder format when the set has it, else the shards. ``batch_size`` is the
    batch the shard reader trims to.
    """
    if fmt not in get_args(SetFormat):
        raise ValueError(f"fmt={fmt!r} is not valid; choose one of {list(get_args(SetFormat))}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"export folder {root} does not exist; run `diffaug export` first")
    folder_ok = (root / IMAGES_DIR).is_dir() and (root / CLASSES_JSON).is_file()
    shards_ok = (root / SHARDS_DIR).is_dir()
    if fmt == "auto":
        fmt = "folder" if folder_ok else "shards" if shards_ok else "auto"
    if fmt == "folder" and folder_ok:
        return _open_folder(root, resolution=resolution, channels=channels, max_items=max_items)
    if fmt == "shards" and shards_ok:
        module = DiffusionDataModule(
            source="shards", path=root / SHARDS_DIR, resolution=resolution, channels=channels,
            batch_size=batch_size, val_fraction=0.0, shuffle_buffer=0, max_items=max_items,
        )
        module.setup("fit")
        return AugmentationSet(root, "shards", module.train_set, module.class_map)
    raise FileNotFoundError(
        f"{root} holds no finished augmentation set in format {fmt!r}: expected {IMAGES_DIR}/ with "
        f"{CLASSES_JSON} (format folder) or {SHARDS_DIR}/ (format shards), as written by `diffaug export`"
    )


def _open_folder(root: Path, *, resolution: int, channels: int, max_items: int | None) -> AugmentationSet:
    names = ClassMap.from_json(root / CLASSES_JSON)
    dirs = sanitize_class_names(names.names)
    present = [d for d in dirs if (root / IMAGES_DIR / d).is_dir()]
    if not present:
        raise FileNotFoundError(f"{root / IMAGES_DIR} has none of the class folders {list(dirs)}")
    module = DiffusionDataModule(
        source="folder", path=root / IMAGES_DIR, resolution=resolution, channels=channels, batch_size=1,
        val_fraction=0.0, class_names=present, max_items=max_items,
    )
    module.setup("fit")
    # folder class j is export class dirs.index(present[j])
    relabelled = _Relabelled(module.train_set, [dirs.index(d) for d in present])
    return AugmentationSet(root, "folder", relabelled, names)
