"""Image folders on real files: layouts, formats, conversion and corrupt files."""

import logging

import numpy as np
import pytest
import torch

from diffaug.data import (
    CorruptDataError,
    CorruptionLog,
    DiffusionDataModule,
    FolderSource,
    ImageTransform,
    SourceView,
)
from diffaug.data.transforms import to_uint8
from tests.data_helpers import iterate_until_error, make_class_folders, save_image


def _view(source, on_corrupt="fail", resolution=8, channels=1):
    log = CorruptionLog(on_corrupt)
    transform = ImageTransform(resolution=resolution, channels=channels)
    return SourceView(source, np.arange(len(source)), transform=transform, corruption=log), log


def test_labelled_folder_mixed_formats_and_conversion(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide x 30 high, RGB
    save_image(tmp_path / "zebra" / "a.png", rgb)
    save_image(tmp_path / "zebra" / "nested" / "b.bmp", rgb)
    save_image(tmp_path / "apple" / "c.jpg", rgb, quality=95)
    save_image(tmp_path / "apple" / "d.webp", rgb, lossless=True)
    save_image(tmp_path / "apple" / "e.tiff", np.full((30, 40), 77, dtype=np.uint8))
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    (tmp_path / "apple" / ".hidden.png").write_bytes(b"ignored")

    source = FolderSource(path=tmp_path)
    assert source.class_map.names == ("apple", "zebra")  # sorted folder names
    assert len(source) == 5
    assert source.targets.tolist() == [0, 0, 0, 1, 1]
    view, _ = _view(source, resolution=16, channels=1)
    images, labels = zip(*[view[i] for i in range(len(view))])
    assert all(x.shape == (1, 16, 16) and x.dtype == torch.float32 for x in images)
    assert list(labels) == [0, 0, 0, 1, 1]
    assert all(-1 <= x.min() and x.max() <= 1 for x in images)
    # The constant grey TIFF stays exactly 77 through resize and the range mapping.
    assert (to_uint8(images[2]) == 77).all()
    # Lossless formats of the same pixels agree exactly after conversion.
    assert torch.equal(images[1], images[3])  # webp (lossless) == png
    assert torch.equal(images[3], images[4])  # png == bmp


def test_unlabelled_folder_is_single_class_all(tmp_path):
    for i in range(3):
        save_image(tmp_path / f"{i}.png", np.full((5, 5, 3), 40 * i, dtype=np.uint8))
    source = FolderSource(path=tmp_path)
    assert source.class_map.names == ("all",)
    assert source.targets.tolist() == [0, 0, 0]
    view, _ = _view(source, resolution=5, channels=3)
    image, label = view[2]
    assert label == 0 and image.shape == (3, 5, 5) and (to_uint8(image) == 80).all()
    renamed = FolderSource(path=tmp_path, class_names=["face"])
    assert renamed.class_map.names == ("face",)


def test_class_names_select_and_order_folders(tmp_path):
    make_class_folders(tmp_path, {"a": 1, "b": 2, "c": 3})
    source = FolderSource(path=tmp_path, class_names=["c", "a"])
    assert source.class_map.names == ("c", "a")
    assert source.targets.tolist() == [0, 0, 0, 1]  # c's three images, then a's one; b is left out
    with pytest.raises(ValueError, match=r"\['x'\] have no sub-folder.*\['a', 'b', 'c'\]"):
        FolderSource(path=tmp_path, class_names=["a", "x"]).class_map


def test_split_subfolder_and_layout_errors(tmp_path):
    make_class_folders(tmp_path / "test", {"a": 2})
    assert len(FolderSource(path=tmp_path, split="test")) == 2
    with pytest.raises(FileNotFoundError, match="no 'test' sub-folder"):
        FolderSource(path=tmp_path / "test", split="test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(path=tmp_path / "missing")

    mixed = tmp_path / "mixed"
    make_class_folders(mixed, {"a": 1})
    save_image(mixed / "loose.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="loose.png"):
        FolderSource(path=mixed).targets

    empty = tmp_path / "empty"
    make_class_folders(empty, {"a": 1})
    (empty / "b").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/b holds no images"):
        FolderSource(path=empty).targets


@pytest.fixture
def folder_with_corrupt(tmp_path):
    make_class_folders(tmp_path, {"a": 3, "b": 3})
    good = (tmp_path / "a" / "img_000.png").read_bytes()
    truncated = tmp_path / "a" / "img_001.png"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "b" / "img_002.png"
    garbage.write_bytes(b"\x00garbage, not a PNG" * 10)
    return tmp_path, truncated, garbage


def test_corrupt_image_fail_names_the_path(folder_with_corrupt):
    root, truncated, _ = folder_with_corrupt
    view, _ = _view(FolderSource(path=root), on_corrupt="fail")
    assert view[0][1] == 0  # good files still load
    with pytest.raises(CorruptDataError, match=str(truncated)):
        view[1]


def test_corrupt_image_skip_replaces_with_same_class_and_counts(folder_with_corrupt, caplog):
    root, truncated, garbage = folder_with_corrupt
    view, log = _view(FolderSource(path=root), on_corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="diffaug.data.corrupt"):
        image, label = view[1]  # the truncated image in class a
    assert str(truncated) in caplog.text
    assert label == 0
    assert to_uint8(image)[0, 0, 0].item() == 2  # replaced by the next item of class a (grey level 0 + 2)
    image, label = view[5]  # the garbage file, last of class b: wraps around to b's first image
    assert label == 1 and to_uint8(image)[0, 0, 0].item() == 10
    view[1]  # seen again (next epoch): still one distinct skipped file
    assert log.count == 2
    assert log.skipped == sorted([str(truncated), str(garbage)])


def test_skip_count_reaches_main_process_from_workers(folder_with_corrupt):
    root, truncated, garbage = folder_with_corrupt
    dm = DiffusionDataModule(
        source="folder", path=root, resolution=8, channels=1, batch_size=2, num_workers=2,
        val_fraction=0.0, on_corrupt="skip",
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(x.shape == (2, 1, 8, 8) for x, _ in batches)  # batches keep their size
    assert dm.corrupt_count == 2
    assert dm.skipped_files == sorted([str(truncated), str(garbage)])


def test_fail_in_worker_raises_in_main_process_with_path(folder_with_corrupt):
    root, truncated, garbage = folder_with_corrupt
    dm = DiffusionDataModule(
        source="folder", path=root, resolution=8, channels=1, batch_size=6, num_workers=1,
        val_fraction=0.0, on_corrupt="fail",
    )
    with pytest.raises(CorruptDataError, match=r"img_00[12]\.png"):
        iterate_until_error(dm.train_dataloader())
