"""Sample grids, one row per class: ``diffaug sample`` and the training callback draw them the same way.

Cell (c, i) is image i of class c of an export with the same settings (same seed, guidance, sampler), so a
grid previews exactly the first images of that export, and a grid drawn during training equals the one
``diffaug sample`` draws from the checkpoint saved at that step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from diffaug import tracking
from diffaug.augset.files import atomic_write_bytes
from diffaug.augset.images import encode_image
from diffaug.sampling.generate import class_items, draw
from diffaug.sampling.model import load_model
from diffaug.sampling.settings import SampleSettings

log = logging.getLogger(__name__)

GRID_PADDING = 2
GRID_PAD_VALUE = 255  # white gaps between cells


def image_grid(images: Tensor, per_row: int) -> Tensor:
    """(N, C, H, W) uint8 -> (C, rows (H + 2) + 2, per_row (W + 2) + 2) uint8, row-major, white gaps."""
    if len(images) == 1:  # make_grid returns a lone image as it is, without the frame
        return F.pad(images[0], (GRID_PADDING,) * 4, value=GRID_PAD_VALUE)
    grid = make_grid(images, nrow=per_row, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE)
    return grid[: images.shape[1]]  # make_grid repeats a grey channel three times; keep the image's channels


@torch.no_grad()
def class_grid(
    denoiser: Any,
    process: Any,
    class_names: Sequence[str],
    *,
    per_class: int,
    settings: SampleSettings,
    device: torch.device,
    autoencoder: Any = None,
) -> Tensor:
    """(C, H', W') uint8 grid: row c holds images 0 .. per_class-1 of class c (decoded by ``autoencoder``
    for a latent model)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    items = class_items([per_class] * len(class_names), class_names, settings)
    images = draw(denoiser, process, items, settings=settings, device=device, autoencoder=autoencoder)
    return image_grid(images, per_class)


def write_grid(path: str | Path, grid: Tensor) -> Path:
    """The grid as a PNG, written atomically."""
    return atomic_write_bytes(path, encode_image(grid))


def sample_grid(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    per_class: int = 8,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> Path:
    """A PNG with one row per class and ``per_class`` samples each; returns its path.

    Default path: ``<checkpoint stem>_samples.png`` next to the checkpoint.
    """
    model = load_model(checkpoint, overrides, device=device)
    grid = class_grid(model.denoiser, model.process, model.class_map.names, per_class=per_class,
                      settings=model.settings, device=model.device,
                      autoencoder=model.autoencoder)  # (C, H', W')
    path = (
        Path(out) if out is not None else model.checkpoint.with_name(f"{model.checkpoint.stem}_samples.png")
    )
    write_grid(path, grid)
    log.info("wrote a %d x %d sample grid to %s", len(model.class_map), per_class, path)
    if tracking.enabled(model.cfg):
        tracking.log_grid(model.cfg, model.checkpoint, path, model.class_map.names)
    return path
