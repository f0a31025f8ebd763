"""Exact log-likelihood through the probability-flow ODE, and bits per dimension (Song et al. 2021, App. D).

The ODE dx/dt = f(t) x - g(t)^2 score(x, t) / 2 maps data at t_min to the prior at t_max one to one, so by
the instantaneous change of variables

    log p_{t_min}(x) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div_x drift(x(t), t) dt.

The integral runs with classic fourth-order Runge-Kutta on a fixed grid (even in time by default, as
score_sde integrates), so a result depends on the step count only, never on a tolerance search. The
divergence is exact (one backward pass per dimension: small data and tests) or Hutchinson's estimate
eps^T (d drift / dx) eps with probes fixed along each trajectory (FFJORD; unbiased, one backward pass per
probe).

``bits_per_dim`` turns the log-density of dequantised 8-bit images in [-1, 1] into bits per dimension:
a pixel bin is 2 / 256 wide there, hence the log2(128) offset (score_sde's convention).

Only continuous-time processes (VP, sub-VP, VE) have an ODE smooth enough for this: the discrete ones
interpolate log(alpha_bar) piecewise linearly between their steps, so the drift jumps at every step and an
integrator that crosses them upwards picks the wrong side (their natural likelihood is the variational bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from diffaug.diffusion.process import GaussianProcess, Spacing, append_dims

Divergence = Literal["exact", "hutchinson"]
DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]  # (x_t, t (N,), labels) -> x0_hat


@dataclass(frozen=True)
class Likelihood:
    logp: Tensor  # (N,) log-density of x under the model, in nats
    prior_logp: Tensor  # (N,) log-density of the ODE's end point under the prior
    delta_logp: Tensor  # (N,) the integrated divergence
    z: Tensor  # (N, ...) the end point at t_max
    nfe: int  # network evaluations per sample (each with its backward passes)


def _drift(denoise: DenoiseFn, process: GaussianProcess, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
    """Probability-flow drift f x - g^2 score / 2, with score = (alpha x0_hat - x) / sigma^2."""
    n = x.shape[0]
    t_batch = t.to(x.dtype).expand(n)
    x0 = denoise(x, t_batch, labels)
    alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in process.alpha_sigma(t))
    f, g = (append_dims(c.to(x.dtype), x.ndim) for c in process.sde(t))
    score = (alpha * x0 - x) / sigma**2
    return f * x - 0.5 * g**2 * score


def _drift_and_divergence(
    denoise: DenoiseFn, process: GaussianProcess, x: Tensor, t: Tensor, labels: Tensor | None,
    divergence: Divergence, probes: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """drift (N, ...) and its divergence (N,), the latter exact or estimated with the given probes (P, N, ...)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = _drift(denoise, process, x, t, labels)
        if divergence == "exact":
            flat = drift.flatten(1)  # (N, D)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + grad.flatten(1)[:, i]
        else:
            estimates = []
            for k, eps in enumerate(probes):
                (grad,) = torch.autograd.grad(drift, x, eps, retain_graph=k + 1 < len(probes))
                estimates.append((grad * eps).flatten(1).sum(1))  # eps^T J eps, (N,)
            div = torch.stack(estimates).mean(0)
    return drift.detach(), div.detach()


@torch.no_grad()
def ode_likelihood(
    denoise: DenoiseFn,
    process: GaussianProcess,
    x: Tensor,
    *,
    class_labels: Tensor | None = None,
    steps: int = 100,
    divergence: Divergence = "hutchinson",
    num_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    spacing: Spacing = "time",
    generator: torch.Generator | None = None,
) -> Likelihood:
    """log p(x) of data x (N, ...) at t_min under the model's probability-flow ODE, with ``steps`` RK4 steps.

    ``denoise(x_t, t, class_labels) -> x0_hat`` is a Denoiser or an analytic oracle; labels condition it
    (None: unconditional / the null class). The network must be deterministic (eval mode).
    """
    if process.discrete:
        raise ValueError(
            f"the probability-flow likelihood needs a continuous-time process (vp, subvp, ve), not {process.name}: "
            "its drift jumps between the discrete steps"
        )
    if divergence not in get_args(Divergence):
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {get_args(Divergence)}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown probe {probe!r}; choose 'rademacher' or 'gaussian'")
    if steps < 1 or num_probes < 1:
        raise ValueError(f"steps and num_probes must be at least 1, got steps={steps}, num_probes={num_probes}")
    probes = None
    if divergence == "hutchinson":
        shape = (num_probes, *x.shape)
        eps = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
        probes = eps.sign() if probe == "rademacher" else eps  # (P, N, ...), fixed along the trajectory
    # Increasing grid from t_min to t_max; discrete processes get their integer steps and interpolate.
    grid = process.timesteps(steps + 1, device=x.device, spacing=spacing).flip(0)
    nfe = 0

    def field(y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        return _drift_and_divergence(denoise, process, y, t, class_labels, divergence, probes)

    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for t, s in zip(grid[:-1], grid[1:]):
        h = s - t
        k1, d1 = field(x, t)
        k2, d2 = field(x + 0.5 * h.to(x.dtype) * k1, t + 0.5 * h)
        k3, d3 = field(x + 0.5 * h.to(x.dtype) * k2, t + 0.5 * h)
        k4, d4 = field(x + h.to(x.dtype) * k3, s)
        x = x + (h / 6).to(x.dtype) * (k1 + 2 * k2 + 2 * k3 + k4)
        delta = delta + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4).double()
    prior = process.prior_logp(x.double())
    return Likelihood(logp=prior + delta, prior_logp=prior, delta_logp=delta, z=x, nfe=nfe)


def dequantize(images_uint8: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """8-bit pixels -> continuous data in [-1, 1]: (p + u) / 256 mapped to [-1, 1], u ~ U[0, 1) per value."""
    u = torch.rand(images_uint8.shape, generator=generator, device=images_uint8.device)
    return (images_uint8.float() + u) / 128.0 - 1.0


def bits_per_dim(logp: Tensor, num_dims: int) -> Tensor:
    """Bits per dimension of 8-bit data from the log-density (nats) of its dequantised [-1, 1] version."""
    return -logp / (num_dims * math.log(2.0)) + math.log2(128.0)
