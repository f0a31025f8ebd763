"""The one image encoder for every file diffaug writes: exported PNGs, shard members, sample grids.

PNGs carry no metadata and a fixed compression level, so equal pixels give equal bytes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

PNG_COMPRESS_LEVEL = 6


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(
                f"image tensors must be uint8 (C, H, W); convert with to_uint8 first, got {image.dtype}"
            )
        if image.ndim != 3 or not 1 <= image.shape[0] <= 4:
            raise ValueError(f"expected a (C, H, W) image with C in 1..4, got shape {tuple(image.shape)}")
        image = image.detach().cpu().numpy().transpose(1, 2, 0)  # (H, W, C)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W) or (H, W, C), got {image.dtype}")
        # (H, W, 1) is greyscale; PIL infers L / LA / RGB / RGBA from the channel count.
        image = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1
                                                     else image))
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"cannot encode an image of type {type(image).__name__}; give PIL, numpy or a uint8 tensor"
        )
    return image


def encode_image(image: Any, fmt: str = "png") -> bytes:
    """A PIL image, a uint8 array (H, W[, C]) or a uint8 tensor (C, H, W) as the bytes of an image file."""
    pil = _as_pil(image)
    buffer = io.BytesIO()
    if fmt.lower() == "png":
        pil.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        pil.save(buffer, format="JPEG" if fmt.lower() in ("jpg", "jpeg") else fmt.upper())
    return buffer.getvalue()
