"""A new noise process, sampler and network, each registered where it is defined: the whole of what a
newcomer writes to use them from a config. Imported by tests/test_extending.py, which drops the
registrations again afterwards so that other tests see only diffaug's own components.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffaug.diffusion import PROCESSES, GaussianProcess, register_sampler
from diffaug.nets import NETS


# ---------------------------------------------------------------- a new noise process


@PROCESSES.register("toy-cosine")
class CosineProcess(GaussianProcess):
    """Continuous variance preserving process with alpha = cos(pi t / 2), sigma = sin(pi t / 2); its SDE:
    f = d log(alpha)/dt = -(pi / 2) tan(pi t / 2) and g^2 = d(sigma^2)/dt - 2 f sigma^2 = pi tan(pi t / 2)."""

    name = "toy-cosine"
    discrete = False
    default_weighting = "min_snr"

    def __init__(self, *, t_min: float = 1e-3, t_max: float = 0.999):
        super().__init__(t_min=t_min, t_max=t_max)

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        tan = torch.tan(0.5 * math.pi * t)
        return -0.5 * math.pi * tan, (math.pi * tan).sqrt()

    def noise_level(self, t: Tensor) -> Tensor:
        return 1000.0 * t


# ---------------------------------------------------------------- a new sampler

SAMPLER_GRIDS: list[Tensor] = []  # the grid of every call, to check that sampling went through it


@register_sampler("toy-ddim")
def toy_ddim(denoise, process, grid, x, rng):
    """Deterministic DDIM: x_s = alpha_s x0_hat + sigma_s eps_hat."""
    SAMPLER_GRIDS.append(grid.clone())
    for t, s in zip(grid[:-1], grid[1:]):
        x0 = denoise(x, t)
        alpha_t, sigma_t = process.alpha_sigma(t)
        alpha_s, sigma_s = process.alpha_sigma(s)
        x = alpha_s * x0 + sigma_s * (x - alpha_t * x0) / sigma_t
    return denoise(x, grid[-1])


# ---------------------------------------------------------------- a new network


@NETS.register("toy-convnet")
class ToyConvNet(nn.Module):
    """Two convolutions around a noise-level and class embedding: the whole DenoiserNet contract."""

    class_table = "classes.weight"
    lora_targets = (r"^level$",)
    noise_levels_seen: list[Tensor] = []

    def __init__(self, *, in_channels: int, resolution: int, num_classes: int | None = None,
                 attn_backend: str = "sdpa", grad_checkpointing: bool = False, width: int = 8):
        super().__init__()
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes or 0
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.level = nn.Linear(2, width)
        self.classes = nn.Embedding(self.num_classes + 1, width) if self.num_classes else None
        self.conv_out = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        ToyConvNet.noise_levels_seen.append(noise_level.detach().clone())
        phase = noise_level[:, None] / 1000 * math.pi  # (N, 1)
        emb = self.level(torch.cat([phase.sin(), phase.cos()], 1))  # (N, W)
        if self.classes is not None:
            emb = emb + self.classes(class_labels)
        return self.conv_out(torch.relu(self.conv_in(x) + emb[:, :, None, None]))
