"""The probability-flow ODE likelihood against the exact density of a Gaussian mixture.

Given the exact denoiser of a mixture, the ODE pushes the marginal at t_min exactly onto the marginal at
t_max, so log p computed through it must equal the closed-form mixture density at t_min (each component
N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)), up to the prior mismatch at t_max and the RK4 error.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffaug.diffusion import build_process
from diffaug.diffusion.likelihood import bits_per_dim, dequantize, ode_likelihood
from tests.diffusion_helpers import MixtureOracle, single_thread, three_component_mixture  # noqa: F401

MIXTURE = three_component_mixture()
SHAPE = (2, 1, 1)  # a 2-d point as a 2-channel 1x1 image


def mixture_logp_at(process, x: torch.Tensor, t: float) -> torch.Tensor:
    """Closed-form log-density of the noisy mixture marginal at time t, (N,)."""
    alpha, sigma = (float(c) for c in process.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    flat = x.reshape(len(x), -1).double()
    comps = []
    for mean, cov, weight in zip(MIXTURE.means, MIXTURE.covs, MIXTURE.weights):
        dist = torch.distributions.MultivariateNormal(alpha * mean, alpha**2 * cov + sigma**2 * torch.eye(2))
        comps.append(weight.log() + dist.log_prob(flat))
    return torch.logsumexp(torch.stack(comps), 0)


def points(n: int = 64, seed: int = 0) -> torch.Tensor:
    x, _ = MIXTURE.sample(n, torch.Generator().manual_seed(seed))
    return x.reshape(n, *SHAPE)


CONTINUOUS = ("vp", "subvp", "ve")


@pytest.mark.parametrize("name", CONTINUOUS)
def test_exact_divergence_gives_the_mixture_density(name):
    process = build_process(name)
    x = points()
    result = ode_likelihood(MixtureOracle(MIXTURE, process), process, x.double(), steps=80, divergence="exact")
    expected = mixture_logp_at(process, x, process.t_min)
    # The integration itself: with the true marginal at t_max in place of the prior, log p is exact to RK4 error.
    integrated = result.delta_logp + mixture_logp_at(process, result.z, process.t_max)
    assert (integrated - expected).abs().max() < 2e-4
    # The model's answer: the prior N(0, prior_std^2) differs a little from the true marginal at t_max
    # (alpha(1) = 0.007 for VP; VE's sigma_max = 50 on data of scale 1), about 5e-3 nats on average.
    assert (result.logp - expected).abs().max() < 2e-2
    assert (result.logp - expected).abs().mean() < 1e-2
    assert result.nfe == 4 * 80
    # The end point is a draw from the prior: about unit variance after scaling by the prior std.
    assert 0.5 < float((result.z / process.prior_std).std()) < 1.5


def test_too_few_steps_are_visibly_wrong():
    """The check has teeth: an under-resolved integration misses the density by far more than the tolerance."""
    process = build_process("vp")
    x = points()
    coarse = ode_likelihood(MixtureOracle(MIXTURE, process), process, x.double(), steps=2, divergence="exact")
    assert (coarse.logp - mixture_logp_at(process, x, process.t_min)).abs().max() > 0.05


def test_hutchinson_is_unbiased_and_its_spread_shrinks_with_probes():
    process = build_process("vp")
    x = points(32).repeat(64, 1, 1, 1)  # each point 64 times, with independent probes
    oracle = MixtureOracle(MIXTURE, process)
    exact = ode_likelihood(oracle, process, x[:32].double(), steps=30, divergence="exact").logp
    one = ode_likelihood(oracle, process, x.double(), steps=30, num_probes=1,
                         generator=torch.Generator().manual_seed(0)).logp.reshape(64, 32)
    four = ode_likelihood(oracle, process, x.double(), steps=30, num_probes=4,
                          generator=torch.Generator().manual_seed(1)).logp.reshape(64, 32)
    for estimate in (one, four):
        stderr = estimate.std(0) / math.sqrt(64)
        assert ((estimate.mean(0) - exact).abs() < 4 * stderr + 1e-6).float().mean() > 0.9
    assert float(four.std(0).mean()) < 0.7 * float(one.std(0).mean())  # ~1/2 in theory


def test_bits_per_dim_of_a_uniform_model_is_eight():
    """A model uniform on [-1, 1]^D has density 2^-D: 8-bit data then costs exactly 8 bits per dimension."""
    d = 3 * 8 * 8
    logp = torch.full((5,), -d * math.log(2.0))
    assert torch.allclose(bits_per_dim(logp, d), torch.full((5,), 8.0))


def test_dequantize_fills_each_pixel_bin():
    pixels = torch.tensor([0, 127, 255], dtype=torch.uint8).repeat(10000)
    x = dequantize(pixels, torch.Generator().manual_seed(0)).reshape(10000, 3)
    low = torch.tensor([0, 127, 255]) / 128.0 - 1.0
    assert ((x >= low) & (x < low + 1 / 128)).all()
    assert torch.allclose(x.mean(0), low + 0.5 / 128, atol=2e-4)  # uniform within the bin


def test_bad_arguments_name_the_choices():
    process = build_process("vp")
    oracle = MixtureOracle(MIXTURE, process)
    with pytest.raises(ValueError, match="hutchinson"):
        ode_likelihood(oracle, process, points(2).double(), divergence="trace")
    with pytest.raises(ValueError, match="rademacher"):
        ode_likelihood(oracle, process, points(2).double(), probe="uniform")
    with pytest.raises(ValueError, match="steps"):
        ode_likelihood(oracle, process, points(2).double(), steps=0)
    ddpm = build_process("ddpm")
    with pytest.raises(ValueError, match="continuous-time process"):
        ode_likelihood(MixtureOracle(MIXTURE, ddpm), ddpm, points(2).double())
