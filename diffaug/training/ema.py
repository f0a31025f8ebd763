"""Exponential moving average of the denoiser weights, with a half-life counted in training images.

Karras et al. (2022), EDM: the decay per step is ``beta = 0.5 ** (batch_images / halflife_images)``, so the
average forgets half of its history every ``halflife_kimg`` thousand images whatever the batch size, GPU count
or gradient accumulation. The ramp-up caps the half-life at ``rampup`` times the images seen so far, so early
in training the average follows the fast-changing weights instead of remembering the random initialisation.

The average is a frozen copy of the module that lives inside the LightningModule: it is saved in the
checkpoint's ``state_dict`` (exact on resume) and updated identically on every DDP rank. Its floating-point
tensors stay float32 whatever the precision of the weights it follows (see ``_apply``): a bf16 lerp moves a
weight only when (1 - beta) |param - average| exceeds half its bf16 spacing (at least 2**-9 of the weight),
so with (1 - beta) ~ 1e-3 and weights near their average most updates would round away.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_beta(*, batch_images: int, images_seen: float, halflife_kimg: float, rampup: float | None) -> float:
    """Decay of one update; images_seen counts the images before this batch."""
    halflife_images = halflife_kimg * 1000.0
    if rampup is not None:
        halflife_images = min(halflife_images, images_seen * rampup)
    return 0.5 ** (batch_images / max(halflife_images, 1e-8))


class EMA(nn.Module):
    """``self.module`` is the moving average of the weights of the module given to ``update``."""

    def __init__(self, module: nn.Module, *, halflife_kimg: float, rampup: float | None):
        super().__init__()
        if halflife_kimg < 0:
            raise ValueError(f"halflife_kimg must be 0 or more, got {halflife_kimg}")
        if rampup is not None and rampup <= 0:
            raise ValueError(f"rampup must be positive or None (no ramp-up), got {rampup}")
        self.halflife_kimg = halflife_kimg
        self.rampup = rampup
        self.module = copy.deepcopy(module).requires_grad_(False)
        for tensor in (*self.module.parameters(), *self.module.buffers()):  # the copy of a half-precision net
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()
        # float64 counts are exact up to 2**53 images; in the state dict, so a resume continues the ramp.
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.float64))
        # The same count on the host, so that an update never reads the device (a stall of the GPU stream
        # every step); None until the first update after construction or loading reads the buffer once.
        self._images_seen_host: float | None = None

    def _apply(self, fn, recurse=True):
        # Module-wide conversions (``.to(device, dtype)``, ``.cuda()``) move the average but never change its
        # dtypes (float32 weights, the float64 count): Lightning's bf16-true calls ``.to(torch.bfloat16)`` on
        # the whole LightningModule, after a resume has loaded the average, and a round trip through bf16
        # would lose it.
        def move_only(tensor):
            moved = fn(tensor)
            return tensor.to(moved.device) if moved.dtype != tensor.dtype else moved

        return super()._apply(move_only, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._images_seen_host = None  # re-read from the loaded buffer at the next update

    @torch.no_grad()
    def update(self, module: nn.Module, *, batch_images: int) -> float:
        """Move the average towards ``module``'s weights after a step on ``batch_images`` images."""
        if self._images_seen_host is None:
            self._images_seen_host = float(self.images_seen)
        beta = ema_beta(
            batch_images=batch_images,
            images_seen=self._images_seen_host,
            halflife_kimg=self.halflife_kimg,
            rampup=self.rampup,
        )
        averaged = dict(self.module.named_parameters())
        targets, sources = [], []
        for name, param in module.named_parameters():
            targets.append(averaged[name])
            sources.append(param.detach().to(averaged[name].dtype))
        # lerp: ema + (1 - beta) (param - ema), in the average's dtype; one foreach call instead of a kernel
        # launch per tensor (the same arithmetic as Tensor.lerp_).
        torch._foreach_lerp_(targets, sources, 1.0 - beta)
        # Buffers (e.g. running statistics) are copied, not averaged, as EDM does.
        averaged_buffers = dict(self.module.named_buffers())
        for name, buffer in module.named_buffers():
            averaged_buffers[name].copy_(buffer)
        self.images_seen += batch_images
        self._images_seen_host += batch_images
        return beta

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Switch ``module`` to eval mode (dropout off) for the block, then restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
