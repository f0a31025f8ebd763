"""IDX parsing on the real Fashion-MNIST files, and scikit-learn's digits."""

import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from diffaug.data import DigitsSource, IdxFormatError, IdxSource, read_idx, read_idx_header
from diffaug.data.idx import FASHION_MNIST_NAMES
from diffaug.data.transforms import ImageTransform, to_uint8
from tests.data_helpers import FASHION_MNIST_DIR


def test_fashion_mnist_headers_give_standard_counts():
    for split, n in [("train", 60000), ("t10k", 10000)]:
        dtype, shape = read_idx_header(FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz")
        assert dtype == np.uint8 and shape == (n, 28, 28)
        dtype, shape = read_idx_header(FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz")
        assert dtype == np.uint8 and shape == (n,)


def test_fashion_mnist_labels_and_class_names():
    train = IdxSource(path=FASHION_MNIST_DIR, split="train")
    test = IdxSource(path=FASHION_MNIST_DIR, split="test")
    assert len(train) == 60000 and len(test) == 10000
    # Fashion-MNIST is balanced: 6000 / 1000 images of each of the 10 classes.
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert train.class_map.names == FASHION_MNIST_NAMES  # the path mentions "fashion"
    # Labels agree with the raw bytes after the 8-byte label header (read independently here).
    with gzip.open(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    assert struct.unpack(">IIBBBBB", raw[:13])[:2] == (2049, 10000)
    assert test.targets[:5].tolist() == list(raw[8:13])
    assert test.class_map.name(int(test.targets[0])) == "Ankle boot"


def test_fashion_mnist_images_decode_to_model_tensors():
    test = IdxSource(path=FASHION_MNIST_DIR, split="test")
    with gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read(16 + 2 * 784)
    first = np.frombuffer(raw[16 + 784 : 16 + 2 * 784], dtype=np.uint8).reshape(28, 28)  # image 1
    x = ImageTransform(resolution=28, channels=1)(test.load(1))
    assert x.shape == (1, 28, 28)
    assert torch.equal(to_uint8(x)[0], torch.from_numpy(first.copy()))
    assert x.min() == -1.0 and x.max() == 1.0  # Fashion-MNIST images span 0..255


def test_digit_names_by_default_and_override(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_MNIST_DIR / name, tmp_path / name)
    assert IdxSource(path=tmp_path, split="test").class_map.names == tuple("0123456789")
    letters = IdxSource(path=tmp_path, split="test", class_names=list("abcdefghij"))
    assert letters.class_map.index("j") == 9
    with pytest.raises(FileNotFoundError, match=r"no train labels file.*train-labels-idx1-ubyte.gz"):
        IdxSource(path=tmp_path, split="train").targets
    with pytest.raises(ValueError, match="choose one of"):
        IdxSource(path=tmp_path, split="val")


def _raw_idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_raw_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_raw_idx(array))
    assert np.array_equal(read_idx(path), array)
    path.write_bytes(_raw_idx(array)[:-5])
    with pytest.raises(IdxFormatError, match=rf"{path}.*\(2, 3, 4\).*24 data bytes.*19 data bytes"):
        read_idx(path)
    path.write_bytes(b"\x08\x03\x00\x00" + bytes(30))
    with pytest.raises(IdxFormatError, match=rf"{path} is not an IDX file"):
        read_idx(path)


def test_truncated_gzip_idx_errors_with_path(tmp_path):
    data = (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    cut = tmp_path / "t10k-labels-idx1-ubyte.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError, match=rf"{cut}: the compressed data is damaged or cut short"):
        read_idx(cut)
    # A complete gzip stream whose IDX payload is short is caught by the size check instead.
    short = tmp_path / "short-labels-idx1-ubyte.gz"
    with gzip.open(short, "wb") as f:
        f.write(gzip.decompress(data)[:-100])
    with pytest.raises(IdxFormatError, match=rf"{short}.*\(10000,\).*truncated"):
        read_idx(short)


def test_sklearn_digits_split_levels_and_names():
    train, test = DigitsSource(split="train"), DigitsSource(split="test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # the fixed 20 % stratified split
    assert train.class_map.names == tuple("0123456789")
    assert set(np.unique(test.targets).tolist()) == set(range(10))
    image = train.load(0)
    assert image.mode == "L" and image.size == (8, 8)
    levels = np.unique(np.concatenate([np.asarray(train.load(i)).ravel() for i in range(50)]))
    # 16 grey levels 0..16 scaled to 0..255: every value is round(k * 255 / 16).
    assert set(levels.tolist()) <= {round(k * 255 / 16) for k in range(17)}
    assert levels.min() == 0 and levels.max() == 255
    with pytest.raises(ValueError, match="takes no path"):
        DigitsSource(path="/data")
