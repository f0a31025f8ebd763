"""MNIST-format IDX files (MNIST, Fashion-MNIST, EMNIST, KMNIST), gzipped or raw."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from diffaug.data.base import SOURCES, ImageSource
from diffaug.data.classmap import ClassMap

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class IdxFormatError(ValueError):
    """An IDX file is truncated or not in IDX format; the message names the file."""


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _parse_header(path: Path, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise IdxFormatError(
            f"{path} is not an IDX file: expected the magic bytes 00 00 <type> <ndim>, "
            f"got {head[:4].hex(' ')}"
        )
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{path}: unknown IDX type byte 0x{type_code:02X}; valid: {valid}")
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(head) < header_size:
        raise IdxFormatError(
            f"{path}: truncated IDX header, expected {ndim} dimension sizes after the magic number"
        )
    shape = struct.unpack(f">{ndim}I", head[4:header_size])
    return IDX_DTYPES[type_code], tuple(shape), header_size


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) from an IDX header without reading the data."""
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4 + 4 * 255)  # the largest possible header
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(f"{path}: cannot read the IDX header ({error})") from error
    dtype, shape, _ = _parse_header(path, head)
    return dtype, shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The whole array of an IDX file, in native byte order."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises EOFError for a cut file and BadGzipFile (OSError) / zlib.error for damaged data.
        raise IdxFormatError(
            f"{path}: the compressed data is damaged or cut short ({error}); download the file again"
        ) from error
    dtype, shape, header_size = _parse_header(path, raw)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        raise IdxFormatError(
            f"{path}: the IDX header declares shape {shape} of {dtype.name} ({expected} data bytes) but "
            f"the file holds {found} data bytes; it is truncated or corrupt, download it again"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def find_idx_file(directory: Path, split: str, kind: str) -> Path:
    """The images (kind="images", idx3) or labels (kind="labels", idx1) file of a split."""
    prefix = _SPLIT_PREFIX[split]
    rank = "idx3" if kind == "images" else "idx1"
    candidates = [f"{prefix}-{kind}{sep}{rank}-ubyte{gz}" for gz in (".gz", "") for sep in ("-", ".")]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"no {split} {kind} file in {directory}; expected one of {candidates}; found {present or 'nothing'}"
    )


@SOURCES.register("idx")
class IdxSource(ImageSource):
    """The ``split`` ("train" = train-*, "test" = t10k-*) of an IDX directory, as greyscale images.

    Class names: ``class_names`` if given, else the Fashion-MNIST names when the path mentions "fashion",
    else "0".."9". Labels are read at first use; images only at the first image access.
    """

    def __init__(
        self, *, path: str | os.PathLike, split: str = "train", class_names: Sequence[str] | None = None
    ):
        if split not in _SPLIT_PREFIX:
            raise ValueError(
                f"split={split!r} is not valid for IDX data; choose one of {list(_SPLIT_PREFIX)}"
            )
        self.directory = Path(path)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"IDX directory {self.directory} does not exist or is not a directory")
        self.split = split
        self._class_names = None if class_names is None else tuple(class_names)

    @cached_property
    def class_map(self) -> ClassMap:
        if self._class_names is not None:
            return ClassMap(self._class_names)
        if "fashion" in str(self.directory).lower():
            return ClassMap(FASHION_MNIST_NAMES)
        return ClassMap(tuple(str(d) for d in range(10)))

    @cached_property
    def images_path(self) -> Path:
        return find_idx_file(self.directory, self.split, "images")

    @cached_property
    def labels_path(self) -> Path:
        return find_idx_file(self.directory, self.split, "labels")

    @cached_property
    def targets(self) -> np.ndarray:
        labels = read_idx(self.labels_path)
        if labels.ndim != 1:
            raise IdxFormatError(
                f"{self.labels_path}: labels must be 1-D, the header says shape {labels.shape}"
            )
        _, image_shape = read_idx_header(self.images_path)
        if image_shape[0] != len(labels):
            raise IdxFormatError(
                f"{self.images_path} holds {image_shape[0]} images but {self.labels_path} holds "
                f"{len(labels)} labels; the files do not belong together"
            )
        return labels.astype(np.int64)

    @cached_property
    def images(self) -> np.ndarray:
        images = read_idx(self.images_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise IdxFormatError(
                f"{self.images_path}: expected unsigned-byte images of shape (N, H, W), got {images.dtype} "
                f"of shape {images.shape}"
            )
        return images  # (N, H, W) uint8

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])  # (H, W) uint8 -> mode "L"
