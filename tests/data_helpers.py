"""Builders of real image files, folders and shards for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffaug.augset import write_shards
from diffaug.data import ClassMap
from diffaug.data.transforms import to_uint8

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Sample ids are stored as the grey level of a constant image, id * ID_STEP, so they survive PNG
# round trips and the [-1, 1] mapping exactly and can be read back from a model-range tensor.
ID_STEP = 5


def id_image(sample_id: int, size: int = 8) -> np.ndarray:
    assert 0 <= sample_id * ID_STEP <= 255
    return np.full((size, size), sample_id * ID_STEP, dtype=np.uint8)


def read_ids(images) -> list[int]:
    """Sample ids of a batch (N, 1, H, W) in [-1, 1] of id images."""
    pixels = to_uint8(images)[:, 0, 0, 0].tolist()
    return [p // ID_STEP for p in pixels]


def write_id_shards(directory: Path, n: int, *, maxcount: int, num_classes: int = 3) -> dict[str, int]:
    """n id images with label id % num_classes, as shards + shards.json + classes.json."""
    class_map = ClassMap(tuple(f"class{c}" for c in range(num_classes)))
    samples = ((id_image(i), i % num_classes) for i in range(n))
    return write_shards(samples, directory / "shard-%06d.tar", maxcount=maxcount, class_map=class_map)


def save_image(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def make_class_folders(root: Path, per_class: dict[str, int], size: int = 8) -> None:
    """root/<class>/img_<i>.png with constant grey level 10 * class index + i."""
    for c, (name, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            save_image(root / name / f"img_{i:03d}.png", np.full((size, size), 10 * c + i, dtype=np.uint8))


def iterate_until_error(loader) -> None:
    """Iterate a DataLoader, re-raising its first error; workers are shut down right away.

    On the error path the iterator sits in a reference cycle, and when the garbage collector finally
    frees it, worker shutdown waits out DataLoader's 5 s join timeout; Lightning shuts workers down
    explicitly at teardown, so the tests do the same.
    """
    iterator = iter(loader)
    try:
        for _ in iterator:
            pass
    finally:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
