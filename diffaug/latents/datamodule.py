"""Training data from the latent cache: the data module's own splits, read as posterior moments.

The wrapped :class:`~diffaug.data.DiffusionDataModule` still decides which items train and which validate
(k-shot subset, holdout, validation split); this module encodes exactly those items once and yields
``(moments (2 Cl, h, w) float16: mean then log-variance, label)`` in their place. The LightningModule draws
the posterior sample, with its own per-step seeds. With ``data.hflip`` the mirrored image's moments are
cached too and each training item picks one of the two at random, as the image transform would.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffaug.data import DiffusionDataModule, ImageSource, ImageTransform, SourceView
from diffaug.latents.cache import LatentCache, build_cache, cache_key
from diffaug.nets.autoencoder import FrozenAutoencoder

logger = logging.getLogger(__name__)


class CachedLatents(Dataset):
    """Rows ``rows`` of ``cache`` with their ``labels``; ``hflip``: a random half are the mirrored images'."""

    def __init__(self, cache: LatentCache, rows: np.ndarray, labels: np.ndarray, *, hflip: bool = False):
        if hflip and cache.mean_flip is None:
            raise ValueError("hflip needs a cache built with flipped copies (data.hflip=true)")
        self.cache, self.rows, self.labels, self.hflip = cache, rows, np.asarray(labels, np.int64), hflip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        r, c = int(self.rows[i]), self.cache
        # The global stream, as torchvision's RandomHorizontalFlip draws it (seeded per loader worker).
        if self.hflip and bool(torch.rand(()) < 0.5):
            mean, logvar = c.mean_flip[r], c.logvar_flip[r]
        else:
            mean, logvar = c.mean[r], c.logvar[r]
        return torch.cat([mean, logvar]), int(self.labels[i])  # (2 Cl, h, w)


def dataset_fingerprint(dm: DiffusionDataModule, source: ImageSource, indices: np.ndarray) -> str:
    """SHA-256 of what identifies the items ``indices`` of ``dm``'s ``source``: its kind, place, classes,
    labels, and for file sources each file's name, size and modification time (not its pixels: reading
    them all would cost as much as encoding them)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([dm.source, None if dm.path is None else str(Path(dm.path).resolve()), dm.split,
                              list(dm.class_map.names), len(source), int(dm.channels)]).encode())
    digest.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(source.targets[indices], dtype="<i8").tobytes())
    paths = getattr(source, "paths", None)
    if paths is not None:
        for i in indices.tolist():
            stat = Path(paths[i]).stat()
            digest.update(f"{paths[i]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class CachedLatentDataModule(pl.LightningDataModule):
    """``inner``'s training and validation splits as cached latent moments (see the module docstring)."""

    def __init__(self, inner: DiffusionDataModule, autoencoder: FrozenAutoencoder, *, cache_dir: str | Path,
                 device: str = "cpu", progress: bool = True):
        super().__init__()
        if inner.source == "shards":
            raise ValueError("the latent cache reads map-style sources (folder, idx, sklearn_digits); "
                             "encode shards on the fly (model.latent_cache=false)")
        self.inner, self.autoencoder = inner, autoencoder
        self.cache_dir, self.device, self.progress = Path(cache_dir), device, progress
        self.cache_path: Path | None = None
        self.train_set: CachedLatents | None = None
        self.val_set: CachedLatents | None = None

    @property
    def class_map(self):
        return self.inner.class_map

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def num_workers(self) -> int:
        return self.inner.num_workers

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.inner.setup(stage)
        train, val = self.inner.train_set, self.inner.val_set
        views = [v for v in (train, val) if v is not None]
        indices = np.unique(np.concatenate([v.indices for v in views]))  # sorted: an order the key fixes
        dm = self.inner
        key = cache_key(dataset=dataset_fingerprint(dm, train.source, indices), autoencoder=self.autoencoder,
                        resolution=dm.resolution, hflip=dm.hflip)
        reader = SourceView(train.source, indices, corruption=dm.corruption, unlabelled=dm.unlabelled,
                            transform=ImageTransform(resolution=dm.resolution, channels=dm.channels))
        position = {int(i): n for n, i in enumerate(indices.tolist())}

        def load_images(part: np.ndarray) -> Tensor:
            return torch.stack([reader[position[int(i)]][0] for i in part])  # (N, C, H, W)

        self.autoencoder.to(self.device)
        self.cache_path, cache = build_cache(self.cache_dir, key, indices, load_images, self.autoencoder,
                                             show_progress=self.progress)
        logger.info("latent cache %s: %d items", self.cache_path, len(cache.indices))
        self.train_set = CachedLatents(cache, cache.rows(train.indices), train.targets, hflip=dm.hflip)
        if val is not None:
            self.val_set = CachedLatents(cache, cache.rows(val.indices), val.targets)

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.inner.seed) if train else None)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set, train=False)
