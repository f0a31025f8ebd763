"""Per-sample random streams, so that an image depends only on its seed and never on the batch size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Draws are made per sample in chunks of at most this many values (and at most _MAX_CHUNK draws), then
# served one draw at a time: one generator call per chunk instead of per step keeps thousands of tiny
# samples fast. The chunk length depends only on the per-sample shape, so the stream of sample i is the
# same whatever the batch it is in.
_CHUNK_VALUES = 1 << 14
_MAX_CHUNK = 256


class StackedRandomGenerator:
    """One ``torch.Generator`` per sample (the StackedRandomGenerator of Karras et al. 2022): every draw
    for a batch stacks one draw from each sample's own generator, seeded with ``seeds[i]``."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        if len(seeds) == 0:
            raise ValueError("seeds must hold one integer per sample, got an empty list")
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
        if bad:
            raise TypeError(f"seeds must be Python ints, got {bad[:3]!r}")
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 64)) for s in seeds]
        self._buffers: dict[tuple[int, ...], tuple[Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> Tensor:
        """Standard normal float32 noise of shape (N, *sample_shape), row i from generator i."""
        shape = tuple(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"asked for {shape[0]} noise draws from {len(self.generators)} generators")
        sample_shape = shape[1:]
        buffer, position = self._buffers.get(sample_shape, (None, 0))
        if buffer is None or position == buffer.shape[1]:
            numel = max(1, int(torch.Size(sample_shape).numel()))
            chunk = max(1, min(_MAX_CHUNK, _CHUNK_VALUES // numel))
            shape_of_chunk = (chunk, *sample_shape)
            draws = [torch.randn(shape_of_chunk, generator=g, device=self.device, dtype=torch.float32)
                     for g in self.generators]
            buffer = torch.stack(draws)  # (N, chunk, *sample_shape)
            position = 0
        self._buffers[sample_shape] = (buffer, position + 1)
        return buffer[:, position]

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape).to(x.dtype)
