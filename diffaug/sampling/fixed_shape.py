"""Network calls at one fixed batch shape, so a result never depends on the batch it was computed in.

CPU and GPU kernels choose their algorithm (and so their summation order) by batch shape: one image's
prediction can differ in the last bits between a batch of 1 and a batch of 16, and after many sampling
steps a pixel rounds the other way. At a fixed shape each row's result depends on that row alone, so
calling every network on chunks of exactly ``rows`` rows (padding the last) makes exported images the
same at any batch size and on any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffaug.config import ConfigError


def _check_rows(rows: int) -> int:
    if rows < 1:
        raise ConfigError(f"invalid value for config key 'sampling.microbatch': {rows}; must be >= 1")
    return rows


def _pad(x: Tensor, pad: int) -> Tensor:
    if pad == 0:
        return x
    return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])  # repeat the last row: a valid input


def apply_in_chunks(fn: Callable[..., Tensor], rows: int, *inputs: Tensor | None) -> Tensor:
    """``fn(*inputs)`` computed on chunks of exactly ``rows`` rows (``None`` inputs passed through)."""
    _check_rows(rows)
    n = next(x for x in inputs if x is not None).shape[0]
    outputs = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        pad = rows - (stop - start)
        chunk = [None if x is None else _pad(x[start:stop], pad) for x in inputs]
        outputs.append(fn(*chunk)[: stop - start])
    return torch.cat(outputs)


class FixedShapeDenoiser(torch.nn.Module):
    """``denoiser(x_t, t, class_labels)`` evaluated on chunks of exactly ``rows`` rows."""

    def __init__(self, denoiser: Callable[..., Tensor], rows: int):
        super().__init__()
        self.denoiser = denoiser
        self.rows = _check_rows(rows)
        self.null_class = getattr(denoiser, "null_class", None)
        self.num_classes = getattr(denoiser, "num_classes", None)

    def forward(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        return apply_in_chunks(self.denoiser, self.rows, x_t, t, class_labels)  # (N, C, H, W)
