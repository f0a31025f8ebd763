"""Pixel conventions: the one place images enter and leave the model's [-1, 1] range.

Every source turns a PIL image into a model tensor through :class:`ImageTransform`, and everything that
writes images back (samplers, exporters) goes through :func:`to_uint8`, so the mapping 0 -> -1, 255 -> 1
cannot drift between training and export.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

# PIL mode for each supported channel count.
CHANNEL_MODES: dict[int, str] = {1: "L", 3: "RGB", 4: "RGBA"}


def to_model_range(x_uint8: Tensor) -> Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(
            f"to_model_range expects uint8 pixels in [0, 255], got dtype {x_uint8.dtype}; "
            "convert with torchvision's PILToTensor (not ToTensor, which already rescales to [0, 1])"
        )
    return x_uint8.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Model-range tensor -> uint8 pixels; values outside [-1, 1] are clamped, then rounded to nearest."""
    if not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating point tensor in [-1, 1], got dtype {x.dtype}")
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def pil_mode_for(channels: int) -> str:
    """PIL mode for a channel count, with the valid counts in the error."""
    if channels not in CHANNEL_MODES:
        raise ValueError(
            f"channels={channels} is not supported; use 1 (grey, 'L'), 3 (RGB) or 4 (RGBA)"
        )
    return CHANNEL_MODES[channels]


class ImageTransform:
    """PIL image of any mode and size -> float32 (C, H, W) tensor in [-1, 1].

    Converts to ``channels`` (1 = L, 3 = RGB, 4 = RGBA), resizes the shorter side to ``resolution``
    (antialiased) and centre-crops a square. Horizontal flips are off by default because they change
    the class of digits, text and lateralised anatomy.
    """

    def __init__(self, *, resolution: int, channels: int, hflip: bool = False):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = resolution
        self.channels = channels
        self.mode = pil_mode_for(channels)
        self.hflip = hflip
        steps: list[v2.Transform] = [
            v2.Resize(resolution, antialias=True),
            v2.CenterCrop(resolution),
            v2.PILToTensor(),  # (C, H, W) uint8
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        self._pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image) -> Tensor:
        image = self._convert_mode(image)
        pixels = self._pipeline(image)  # (C, H, W) uint8
        return to_model_range(pixels)

    def _convert_mode(self, image: Image.Image) -> Image.Image:
        if image.mode == self.mode:
            return image
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16/32-bit greyscale: PIL's convert("L") clips instead of rescaling, so rescale the full range.
            image = _wide_grey_to_l(image)
        elif image.mode == "P":
            # Palette images may carry transparency; going through RGBA keeps it for channels=4.
            image = image.convert("RGBA")
        return image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ImageTransform(resolution={self.resolution}, channels={self.channels}, hflip={self.hflip})"


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """Rescale a 16-bit / 32-bit / float greyscale image to 8-bit by its type's full range."""
    array = np.asarray(image)
    if image.mode == "F":
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array8 = ((array - low) * scale).round()
    else:
        array8 = (array.astype(np.float64) * (255.0 / 65535.0)).round()
    return Image.fromarray(array8.clip(0, 255).astype(np.uint8))
