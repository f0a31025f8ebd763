"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download needed)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
from PIL import Image

from diffaug.data.base import SOURCES, ImageSource
from diffaug.data.classmap import ClassMap

# A fixed, stratified 80/20 train/test split: the split is a property of the data set, not of the run seed.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@SOURCES.register("sklearn_digits")
class DigitsSource(ImageSource):
    """``sklearn.datasets.load_digits``; 16 grey levels 0..16 scaled to 0..255, classes "0".."9"."""

    def __init__(
        self, *, path: object = None, split: str = "train", class_names: Sequence[str] | None = None
    ):
        if path is not None:
            raise ValueError(f"sklearn_digits is bundled with scikit-learn and takes no path (got {path!r})")
        if split not in ("train", "test"):
            raise ValueError(
                f"split={split!r} is not valid for sklearn_digits; choose one of ['train', 'test']"
            )
        self.split = split
        names = tuple(str(d) for d in range(10)) if class_names is None else tuple(class_names)
        if len(names) != 10:
            raise ValueError(f"sklearn_digits has 10 classes but class_names has {len(names)}: {list(names)}")
        self._class_map = ClassMap(names)

    @property
    def class_map(self) -> ClassMap:
        return self._class_map

    @cached_property
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        levels = digits.images  # (1797, 8, 8) float, integer grey levels 0..16
        images = np.round(levels * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        train, test = train_test_split(
            np.arange(len(images)),
            test_size=TEST_FRACTION,
            stratify=digits.target,
            random_state=SPLIT_SEED,
        )
        chosen = np.sort(train if self.split == "train" else test)
        return images[chosen], digits.target[chosen].astype(np.int64)

    @property
    def targets(self) -> np.ndarray:
        return self._data[1]

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._data[0][i])  # (8, 8) uint8 -> mode "L"
