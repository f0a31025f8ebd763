"""DiffusionDataModule end to end: splits, k-shot subsets, batches, validation of arguments."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from diffaug.data import DiffusionDataModule, select_indices
from diffaug.data.idx import FASHION_MNIST_NAMES
from tests.data_helpers import FASHION_MNIST_DIR, make_class_folders, write_id_shards


def test_per_class_limit_takes_exactly_k_per_class_deterministically():
    def train_indices(seed, val_fraction=0.1):
        dm = DiffusionDataModule(source="idx", path=FASHION_MNIST_DIR, split="test", per_class_limit=7,
                                 val_fraction=val_fraction, seed=seed, batch_size=10)
        dm.setup("fit")
        return dm.train_set.indices, dm.train_set.targets, dm.val_set.indices

    train, labels, val = train_indices(seed=1)
    assert np.bincount(labels).tolist() == [7] * 10
    assert len(val) == 1000  # 10 % of each class's 1000 test images
    assert not set(train) & set(val)
    again, _, _ = train_indices(seed=1)
    assert np.array_equal(train, again)
    other, _, _ = train_indices(seed=2)
    assert not np.array_equal(train, other)
    # The k-shot set of a seed does not depend on how much is held out for validation.
    assert np.array_equal(train, train_indices(seed=1, val_fraction=0.3)[0])


def test_select_indices_stratifies_validation_and_caps_items():
    targets = np.repeat(np.arange(3), [10, 20, 30])
    split = dict(num_classes=3, val_fraction=0.2, per_class_limit=None, seed=0)
    train, val = select_indices(targets, max_items=None, **split)
    assert np.bincount(targets[val]).tolist() == [2, 4, 6]
    assert np.bincount(targets[train]).tolist() == [8, 16, 24]
    train, val = select_indices(targets, max_items=5, **split)
    assert len(train) == 5 and len(val) == 5
    with pytest.raises(ValueError, match="pass class_names"):
        select_indices(targets, num_classes=2, val_fraction=0, per_class_limit=None, max_items=None, seed=0)


def test_idx_end_to_end_batches_and_class_map():
    dm = DiffusionDataModule(source="idx", path=FASHION_MNIST_DIR, split="test", resolution=16, channels=1,
                             batch_size=8, per_class_limit=2, val_fraction=0.01, seed=0)
    assert dm.class_map.names == FASHION_MNIST_NAMES and dm.num_classes == 10
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 20 training images, drop_last
    images, labels = batches[0]
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    assert images.min() >= -1 and images.max() <= 1 and images.min() == -1.0  # black background
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (8, 1, 16, 16)
    assert sorted(torch.cat([y for _, y in dm.val_dataloader()]).tolist()) == sorted(list(range(10)) * 10)


def test_sklearn_digits_to_rgb_with_workers():
    dm = DiffusionDataModule(source="sklearn_digits", resolution=16, channels=3, batch_size=32, num_workers=2,
                             val_fraction=0.1, max_items=64)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.drop_last
    batches = list(loader)
    assert [x.shape for x, _ in batches] == [(32, 3, 16, 16)] * 2
    x = batches[0][0]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey digits copied to RGB
    assert all(0 <= y.min() and y.max() <= 9 for _, y in batches)


def test_class_map_is_cheap_before_setup(tmp_path):
    make_class_folders(tmp_path / "imgs", {"cat": 2, "dog": 2})
    for png in (tmp_path / "imgs").rglob("*.png"):
        png.write_bytes(b"not decodable")  # class_map must not need to decode anything
    dm = DiffusionDataModule(source="folder", path=tmp_path / "imgs", on_corrupt="fail")
    assert dm.class_map.names == ("cat", "dog") and dm.num_classes == 2

    write_id_shards(tmp_path / "shards", 6, maxcount=3, num_classes=4)
    dm = DiffusionDataModule(source="shards", path=tmp_path / "shards", class_names=None)
    assert dm.class_map.names == ("class0", "class1", "class2", "class3")


def test_shards_with_separate_validation_shards(tmp_path):
    write_id_shards(tmp_path / "train", 12, maxcount=4)
    write_id_shards(tmp_path / "val", 5, maxcount=5)
    dm = DiffusionDataModule(source="shards", path=tmp_path / "train", val_path=tmp_path / "val",
                             resolution=8, batch_size=4, shuffle_buffer=0)
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in train] == [4, 4, 4]
    assert [len(y) for _, y in val] == [4, 1]  # validation keeps its last partial batch
    assert dm.corrupt_count == 0 and dm.skipped_files == []


def test_argument_errors_name_the_choices(tmp_path):
    expected = "valid names: folder, idx, shards, sklearn_digits. Did you mean 'folder'"
    with pytest.raises(KeyError, match=expected):
        DiffusionDataModule(source="folders", path=tmp_path)
    with pytest.raises(ValueError, match=r"\['skip', 'fail'\]"):
        DiffusionDataModule(source="sklearn_digits", on_corrupt="ignore")
    with pytest.raises(ValueError, match="channels=2"):
        DiffusionDataModule(source="sklearn_digits", channels=2)
    with pytest.raises(ValueError, match="export the k-shot subset"):
        DiffusionDataModule(source="shards", path=tmp_path, per_class_limit=5)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        DiffusionDataModule(source="sklearn_digits", val_fraction=1.0)
    dm = DiffusionDataModule(source="sklearn_digits", per_class_limit=1, batch_size=16)
    with pytest.raises(ValueError, match="10 items, fewer than batch_size=16"):
        dm.setup("fit")


class _ShapeRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_shapes, self.val_shapes = [], []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.train_shapes.append((tuple(images.shape), labels.dtype))
        return (self.weight - images.mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.val_shapes.append(tuple(batch[0].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_consumes_the_datamodule():
    dm = DiffusionDataModule(
        source="sklearn_digits", resolution=8, batch_size=16, val_fraction=0.05, max_items=64
    )
    model = _ShapeRecorder()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=3)
    trainer.fit(model, datamodule=dm)
    assert model.train_shapes == [((16, 1, 8, 8), torch.int64)] * 3
    assert model.val_shapes == [(16, 1, 8, 8)]
