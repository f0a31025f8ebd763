"""Image folders: one sub-folder per class, or a flat folder of unlabelled images."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from diffaug.data.base import SOURCES, ImageSource
from diffaug.data.classmap import ClassMap
from diffaug.data.corrupt import UnreadableItem

logger = logging.getLogger(__name__)


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with dot) of every format this PIL build can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _visible(name: str) -> bool:
    return not name.startswith(".")


@SOURCES.register("folder")
class FolderSource(ImageSource):
    """Images under ``path`` (or ``path/<split>`` when that folder exists).

    Labelled layout: ``root/<class name>/**/<image>``, classes in sorted folder-name order (or in the
    order of ``class_names``, which picks a subset of the folders). Unlabelled layout: a folder without
    sub-folders; its images form the single class "all".
    """

    def __init__(
        self, *, path: str | os.PathLike, split: str = "train", class_names: Sequence[str] | None = None
    ):
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        if (root / split).is_dir():
            root = root / split
        elif split != "train":
            raise FileNotFoundError(
                f"no {split!r} sub-folder in {root}; point path at the folder that holds the {split} images"
            )
        self.root = root
        self._class_names = None if class_names is None else tuple(class_names)
        self._extensions = image_extensions()

    @cached_property
    def _class_dirs(self) -> list[str]:
        """Sub-folder names (sorted); empty for the unlabelled layout. Lists directories only: cheap."""
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and _visible(e.name))

    @cached_property
    def class_map(self) -> ClassMap:
        if not self._class_dirs:
            if self._class_names is not None and len(self._class_names) != 1:
                raise ValueError(
                    f"{self.root} has no class sub-folders (unlabelled, one class) but class_names has "
                    f"{len(self._class_names)} names; give one name or none"
                )
            return ClassMap(self._class_names) if self._class_names else ClassMap.unlabelled()
        if self._class_names is None:
            return ClassMap(tuple(self._class_dirs))
        missing = [name for name in self._class_names if name not in self._class_dirs]
        if missing:
            raise ValueError(
                f"class_names {missing} have no sub-folder in {self.root}; "
                f"its class folders are {self._class_dirs}"
            )
        ignored = sorted(set(self._class_dirs) - set(self._class_names))
        if ignored:
            logger.info("ignoring class folders not in class_names: %s", ignored)
        return ClassMap(self._class_names)

    @cached_property
    def _files(self) -> tuple[list[str], np.ndarray]:
        if not self._class_dirs:
            files = self._images_below(self.root)
            if not files:
                raise FileNotFoundError(
                    f"no images found in {self.root} (looked for {self._extension_hint()})"
                )
            return files, np.zeros(len(files), dtype=np.int64)
        loose = [e.name for e in os.scandir(self.root) if e.is_file() and self._is_image(e.name)]
        if loose:
            raise ValueError(
                f"{self.root} holds both class sub-folders and {len(loose)} images directly in it "
                f"(e.g. {loose[0]}); move those images into a class folder, or into their own folder"
            )
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_map.names):
            files = self._images_below(self.root / name)
            if not files:
                raise FileNotFoundError(
                    f"class folder {self.root / name} holds no images (looked for {self._extension_hint()})"
                )
            paths.extend(files)
            labels.extend([label] * len(files))
        return paths, np.asarray(labels, dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return self._files[0]

    @property
    def targets(self) -> np.ndarray:
        return self._files[1]

    def load(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so a truncated or garbled file fails here, with its path
                return image.copy()
        except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise UnreadableItem(path, f"{type(error).__name__}: {error}") from error

    def _is_image(self, name: str) -> bool:
        return _visible(name) and os.path.splitext(name)[1].lower() in self._extensions

    def _images_below(self, folder: Path) -> list[str]:
        found = []
        for directory, subdirs, names in os.walk(folder, followlinks=True):
            subdirs[:] = [d for d in subdirs if _visible(d)]
            found.extend(os.path.join(directory, n) for n in names if self._is_image(n))
        return sorted(found)

    def _extension_hint(self) -> str:
        common = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
        return ", ".join(sorted(common & self._extensions))
