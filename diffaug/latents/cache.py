"""Encode a data set once: the autoencoder's posterior of every image, in fp16 safetensors chunks.

A cache is a folder named by its key (the data set's fingerprint, the autoencoder's hash, the resolution,
crop and channel mapping, and whether flipped copies are held), so a changed data set or autoencoder gets
a new folder and never reads a stale one:

    <cache_dir>/<key>/chunk-00000.safetensors   rows 0 .. CHUNK-1: index (source item), mean, logvar
                                                 (and mean_flip, logvar_flip with data.hflip)
    <cache_dir>/<key>/cache.json                the key's fields and the chunk list, written last

Both the mean and the log-variance are kept (not a latent sample), so training still draws a fresh posterior
sample every step. Every chunk is written atomically and encoded at one fixed batch shape (the last one
padded), so a build killed midway resumes where it stopped and ends with the same bytes as one that was not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from diffaug.augset.files import atomic_write_bytes, atomic_write_json, canonical_json, remove_temp_files
from diffaug.nets.autoencoder import FrozenAutoencoder
from diffaug.progress import progress

FORMAT_VERSION = 1
INDEX_FILE = "cache.json"
CHUNK = 256  # images per chunk file
ENCODE_ROWS = 32  # images per autoencoder call: a fixed shape, so the bytes do not depend on the chunk


class LatentCacheError(ValueError):
    """A latent cache that does not belong to this run, with what to change."""


def cache_key(*, dataset: str, autoencoder: FrozenAutoencoder, resolution: int, hflip: bool) -> dict[str, Any]:
    """Everything the cached numbers depend on. ``dataset``: a fingerprint of the items encoded."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "autoencoder_sha256": autoencoder.sha256,
        "autoencoder_channels": autoencoder.channels,
        "resolution": int(resolution),
        "crop": "resize-shorter-side-antialiased,center-crop",  # diffaug.data.ImageTransform's geometry
        "hflip": bool(hflip),
        "dtype": "float16",
        "chunk": CHUNK,
        "encode_rows": ENCODE_ROWS,
    }


def key_name(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(key)).encode()).hexdigest()[:24]


@dataclass
class LatentCache:
    """Moments of every cached item, rows in the order of ``indices`` (the source items)."""

    indices: np.ndarray  # (M,) source index of each row
    mean: Tensor  # (M, Cl, h, w) float16
    logvar: Tensor
    mean_flip: Tensor | None = None  # the same of the left-right mirrored images (data.hflip)
    logvar_flip: Tensor | None = None

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows holding the source items ``indices``."""
        position = {int(i): r for r, i in enumerate(self.indices.tolist())}
        return np.asarray([position[int(i)] for i in indices], dtype=np.int64)


def _encode_fixed(autoencoder: FrozenAutoencoder, images: Tensor) -> tuple[Tensor, Tensor]:
    """Moments of ``images`` computed ENCODE_ROWS at a time, the last call padded with its last image."""
    means, logvars = [], []
    for start in range(0, len(images), ENCODE_ROWS):
        part = images[start : start + ENCODE_ROWS]
        pad = ENCODE_ROWS - len(part)
        mean, logvar = autoencoder.moments(torch.cat([part, part[-1:].expand(pad, *part.shape[1:])]))
        means.append(mean[: len(part)])
        logvars.append(logvar[: len(part)])
    return torch.cat(means).cpu(), torch.cat(logvars).cpu()


def _chunk_bytes(autoencoder: FrozenAutoencoder, indices: np.ndarray, images: Tensor, hflip: bool) -> bytes:
    tensors = {"index": torch.as_tensor(indices, dtype=torch.int64)}
    views = {"": images, "_flip": images.flip(-1)} if hflip else {"": images}
    for suffix, pixels in views.items():
        mean, logvar = _encode_fixed(autoencoder, pixels)
        tensors["mean" + suffix] = mean.to(torch.float16).contiguous()
        tensors["logvar" + suffix] = logvar.to(torch.float16).contiguous()
    return safetensors_bytes(tensors, metadata={"format_version": str(FORMAT_VERSION)})


def _chunk_name(k: int) -> str:
    return f"chunk-{k:05d}.safetensors"


def _check_index(folder: Path, key: Mapping[str, Any]) -> dict[str, Any]:
    index = json.loads((folder / INDEX_FILE).read_text())
    saved = index.get("key", {})
    if saved.get("autoencoder_sha256") != key["autoencoder_sha256"]:
        raise LatentCacheError(
            f"the latent cache {folder} was built with autoencoder {str(saved.get('autoencoder_sha256'))[:12]}, "
            f"this run's is {key['autoencoder_sha256'][:12]}; delete {folder} or set model.latent_cache_dir "
            "to another folder")
    if saved != dict(key):
        changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
        raise LatentCacheError(f"the latent cache {folder} was built for other settings (differences in: "
                               f"{', '.join(changed)}); delete it or set model.latent_cache_dir elsewhere")
    return index


def read_cache(folder: str | Path, key: Mapping[str, Any]) -> LatentCache:
    """The finished cache in ``folder``, after checking it was built for ``key``."""
    folder = Path(folder)
    index = _check_index(folder, key)
    parts = [load_safetensors((folder / name).read_bytes()) for name in index["chunks"]]
    joined = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return LatentCache(indices=joined["index"].numpy(), mean=joined["mean"], logvar=joined["logvar"],
                       mean_flip=joined.get("mean_flip"), logvar_flip=joined.get("logvar_flip"))


def build_cache(
    cache_dir: str | Path,
    key: Mapping[str, Any],
    indices: np.ndarray,
    load_images: Callable[[np.ndarray], Tensor],
    autoencoder: FrozenAutoencoder,
    *,
    show_progress: bool = True,
) -> tuple[Path, LatentCache]:
    """The cache of ``indices`` (source items, encoded in this order) under ``cache_dir``: read when it is
    complete, else built, continuing a build that was killed. ``load_images(indices)``: (N, C, H, W) images
    in [-1, 1], unflipped."""
    folder = Path(cache_dir) / key_name(key)
    if (folder / INDEX_FILE).is_file():
        return folder, read_cache(folder, key)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temp_files(folder, "cache")  # what a killed build was writing
    indices = np.asarray(indices, dtype=np.int64)
    starts = range(0, len(indices), CHUNK)
    names = [_chunk_name(k) for k in range(len(starts))]
    for k in progress(range(len(starts)), desc="latent cache", total=len(starts), unit="chunk",
                      enabled=show_progress):
        path = folder / names[k]
        if path.is_file():  # a finished chunk of an earlier, interrupted build
            continue
        part = indices[starts[k] : starts[k] + CHUNK]
        data = _chunk_bytes(autoencoder, part, load_images(part), bool(key["hflip"]))
        atomic_write_bytes(path, data, tag="cache")
    atomic_write_json(folder / INDEX_FILE, {"key": dict(key), "num_items": len(indices), "chunks": names},
                      tag="cache")
    return folder, read_cache(folder, key)
