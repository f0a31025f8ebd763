"""Small networks and inputs shared by the tests/test_nets_*.py files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from diffaug.nets import build_net

# Both architectures at 8x8, small enough to run many forward/backward passes on a shared CPU.
TINY_NETS: dict[str, dict[str, Any]] = {
    "unet": dict(name="unet-tiny", model_channels=16, resolution=8),
    "dit": dict(name="dit-tiny", resolution=8),
}


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """Run on one intra-op thread: on an oversubscribed CPU, two spinning OpenMP threads run tiny nets ~20x
    slower than one. Import this fixture into a test module to apply it there."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_net(kind: str, **overrides: Any) -> nn.Module:
    kwargs = {**TINY_NETS[kind], **overrides}
    torch.manual_seed(0)
    return build_net(kwargs.pop("name"), **kwargs)


@torch.no_grad()
def perturb_(net: nn.Module, std: float = 0.05, seed: int = 1) -> nn.Module:
    """Add Gaussian noise to every parameter, so zero-initialised layers stop hiding the inputs' effect."""
    generator = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * std)
    return net


def inputs(n: int = 4, channels: int = 3, resolution: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """x (N, C, H, W) ~ N(0, 1) and noise levels spread over [0, 1000)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, resolution, resolution, generator=generator)
    noise_level = torch.rand(n, generator=generator) * 1000
    return x, noise_level
