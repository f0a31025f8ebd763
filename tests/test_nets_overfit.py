"""A tiny UNet and a tiny DiT must memorise a batch of 8 noised images under each noising family.

The noising is written inline (x_t = alpha x0 + sigma eps, eps-prediction MSE) so these tests depend only on
the networks. Each sample keeps one fixed (t, eps) pair, which turns the task into a regression the network
can solve exactly, so the loss has to fall by at least 10x.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tests.nets_helpers import one_cpu_thread, tiny_net  # noqa: F401 (autouse fixture)

N, CHANNELS, RESOLUTION, NUM_CLASSES, STEPS = 8, 3, 8, 4, 120


def ddpm_noising(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Discrete DDPM: linear betas 1e-4..0.02 over 1000 steps; the network sees the step index."""
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), dim=0)
    t = torch.randint(0, 1000, (N,), generator=generator)
    return alpha_bar[t].sqrt().float(), (1 - alpha_bar[t]).sqrt().float(), t.float()


def ve_noising(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """NCSN / VE: alpha = 1, sigma geometric in [0.01, 50]; the network sees 100 log sigma (negative too)."""
    log_sigma = math.log(0.01) + torch.rand(N, generator=generator) * (math.log(50) - math.log(0.01))
    return torch.ones(N), log_sigma.exp(), 100 * log_sigma


def vp_noising(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """VP SDE with beta(t) linear 0.1..20 on t in [1e-3, 1]; the network sees 999 t."""
    t = 1e-3 + torch.rand(N, generator=generator) * (1 - 1e-3)
    alpha = torch.exp(-0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1)
    return alpha, (1 - alpha**2).sqrt(), 999 * t


FAMILIES = {"ddpm": ddpm_noising, "ve": ve_noising, "vp": vp_noising}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_tiny_net_overfits_a_batch(kind, family):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(N, CHANNELS, RESOLUTION, RESOLUTION, generator=generator) * 2 - 1  # (N, C, H, W)
    eps = torch.randn(x0.shape, generator=generator)
    labels = torch.randint(0, NUM_CLASSES + 1, (N,), generator=generator)  # includes the null class
    alpha, sigma, noise_level = FAMILIES[family](generator)  # (N,) each
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    # Unit-variance input, as any preconditioned denoiser hands it (VE's x_t spans 0.01 to 50 otherwise).
    x_in = x_t / (alpha**2 * x0.var() + sigma**2).sqrt()[:, None, None, None]

    net = tiny_net(kind, in_channels=CHANNELS, num_classes=NUM_CLASSES)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(STEPS):
        loss = (net(x_in, noise_level, labels) - eps).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Zero-initialised output: the first loss is exactly E[eps^2] of the fixed noise.
    assert losses[0] == pytest.approx(eps.square().mean().item(), rel=1e-6)
    assert sum(losses[-10:]) / 10 < 0.1 * losses[0], (losses[0], losses[-10:])
