"""Input checks shared by every network, so a wrong shape or dtype fails with a message naming the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def check_image_batch(x: Tensor, *, channels: int, resolution: int, net_name: str) -> None:
    """x must be a float (N, channels, resolution, resolution) tensor."""
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != (resolution, resolution):
        raise ValueError(
            f"{net_name} expects x of shape (N, {channels}, {resolution}, {resolution}), "
            f"got {tuple(x.shape)}; build the network with in_channels and resolution matching the data"
        )
    if not x.is_floating_point():
        raise TypeError(f"{net_name} expects a floating point x, got {x.dtype}; convert images with .float()")


def check_noise_level(noise_level: Tensor, batch_size: int) -> None:
    """noise_level must be a real-valued (N,) tensor (float, or integer for discrete time steps)."""
    if noise_level.shape != (batch_size,):
        raise ValueError(
            f"noise_level must have shape (N,) = ({batch_size},), got {tuple(noise_level.shape)}; "
            "pass one value per sample, e.g. noise_level.expand(N)"
        )
    if noise_level.is_complex() or noise_level.dtype == torch.bool:
        raise TypeError(f"noise_level must be a real float or integer tensor, got {noise_level.dtype}")


def check_class_labels(class_labels: Tensor | None, batch_size: int, num_classes: int) -> None:
    """class_labels: an integer (N,) tensor in [0, num_classes]; index num_classes is the null class."""
    if class_labels is None:
        raise ValueError(
            f"this network is class-conditional ({num_classes} classes) and needs class_labels; "
            f"for unconditional outputs pass the null class, torch.full((N,), {num_classes})"
        )
    if class_labels.shape != (batch_size,):
        raise ValueError(f"class_labels must have shape ({batch_size},), got {tuple(class_labels.shape)}")
    if class_labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"class_labels must be int64 (or int32), got {class_labels.dtype}; use labels.long()")
    # A range check reads the values back, which would stall a GPU stream every step, and breaks the graph
    # under torch.compile; on CPU in eager mode it is cheap and replaces the embedding's bare "index out of
    # range in self".
    if class_labels.device.type == "cpu" and class_labels.numel() > 0 and not _compiling():
        low, high = int(class_labels.min()), int(class_labels.max())
        if low < 0 or high > num_classes:
            raise ValueError(
                f"class_labels must lie in [0, {num_classes}] (index {num_classes} is the null class), "
                f"got values in [{low}, {high}]"
            )
