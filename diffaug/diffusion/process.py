"""Noise processes with Gaussian marginals x_t = alpha(t) x0 + sigma(t) eps, behind one interface.

A process is fully described by alpha(t) and sigma(t) on its own time axis, where a larger t means more
noise. Everything samplers and objectives need follows from these two functions: the log-SNR
lambda(t) = log(alpha / sigma), the transition and posterior between two times, and the linear SDE
dx = f(t) x dt + g(t) dW whose marginals are exactly these Gaussians (f = d log(alpha)/dt and
g^2 = d(sigma^2)/dt - 2 f sigma^2). Discrete processes (DDPM, NCSN) use their step index as time and
interpolate between steps, so every continuous-time sampler runs on them too.

``noise_level(t)`` is the value handed to the network; every process maps its range to [0, 1000]
(see each process's docstring).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from diffaug.registry import Registry

Spacing = Literal["time", "logsnr", "karras"]

PROCESSES: Registry[type[GaussianProcess]] = Registry("noise process")


def build_process(name: str, **kwargs) -> GaussianProcess:
    """Build a process by registry name (see ``PROCESSES.names()``) with its keyword arguments."""
    return PROCESSES.get(name)(**kwargs)


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample (N,) tensor to (N, 1, ..., 1) with ndim dims; 0-d tensors stay as they are."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _float64(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t).to(torch.float64)


def _out_dtype(t: Tensor | float) -> torch.dtype:
    t = torch.as_tensor(t)
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


class GaussianProcess(ABC):
    """x_t = alpha(t) x0 + sigma(t) eps for t in [t_min, t_max]; subclasses define alpha, sigma, f, g.

    Coefficients are computed in float64 and returned in t's dtype, so sampling grids kept in float64
    give exact step coefficients while float32 training times stay float32.
    """

    name: ClassVar[str]
    discrete: ClassVar[bool]  # training and sampling times are integer step indices
    # The loss weighting an objective uses when the config names none (see diffusion.losses): denoising
    # score matching's sigma^2, which the NCSN and SDE papers train with; DDPM overrides it with L_simple.
    default_weighting: ClassVar[str] = "sigma2"

    def __init__(self, *, t_min: float, t_max: float):
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    # ---------------------------------------------------------------- defined by each process

    @abstractmethod
    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) for float64 t."""

    @abstractmethod
    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f(t), g(t) for float64 t."""

    @abstractmethod
    def noise_level(self, t: Tensor) -> Tensor:
        """The network's conditioning value for process time t, in [0, 1000]."""

    # ---------------------------------------------------------------- the uniform view

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """alpha(t) and sigma(t), shaped like t."""
        alpha, sigma = self._alpha_sigma(_float64(t))
        dtype = _out_dtype(t)
        return alpha.to(dtype), sigma.to(dtype)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t."""
        alpha, sigma = self._alpha_sigma(_float64(t))
        return (alpha.log() - sigma.log()).to(_out_dtype(t))

    def sde(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Linear drift coefficient f(t) and diffusion g(t) of the forward SDE dx = f x dt + g dW."""
        f, g = self._sde(_float64(t))
        dtype = _out_dtype(t)
        return f.to(dtype), g.to(dtype)

    def reverse_sde(
        self, x: Tensor, t: Tensor, score: Tensor, probability_flow: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Drift and diffusion of the reverse-time SDE dx = [f x - g^2 score] dt + g dW (Song et al. 2021),
        or of the probability-flow ODE dx = [f x - g^2 score / 2] dt (diffusion 0) when probability_flow."""
        f, g = (append_dims(c, x.ndim) for c in self.sde(t))
        if probability_flow:
            return f * x - 0.5 * g**2 * score, torch.zeros_like(g)
        return f * x - g**2 * score, g

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps; x0, eps (N, ...), t (N,) or 0-d."""
        alpha, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in self.alpha_sigma(t))
        return alpha * x0 + sigma * eps

    def transition(self, t: Tensor | float, s: Tensor | float) -> tuple[Tensor, Tensor]:
        """x_t | x_s ~ N(alpha_ts x_s, var_ts I) for t > s: returns (alpha_ts, var_ts)."""
        alpha_t, sigma_t = self.alpha_sigma(t)
        alpha_s, sigma_s = self.alpha_sigma(s)
        alpha_ts = alpha_t / alpha_s
        return alpha_ts, sigma_t**2 - alpha_ts**2 * sigma_s**2

    def posterior_variance(self, t: Tensor | float, s: Tensor | float) -> Tensor:
        """Variance of q(x_s | x_t, x0) for s < t."""
        _, var_ts = self.transition(t, s)
        _, sigma_t = self.alpha_sigma(t)
        _, sigma_s = self.alpha_sigma(s)
        return var_ts * sigma_s**2 / sigma_t**2

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x0) for s < t (DDPM's posterior between any two times)."""
        alpha_ts, var_ts = self.transition(t, s)
        alpha_s, sigma_s = self.alpha_sigma(s)
        _, sigma_t = self.alpha_sigma(t)
        coef_xt = alpha_ts * sigma_s**2 / sigma_t**2
        coef_x0 = alpha_s * var_ts / sigma_t**2
        coef_xt, coef_x0 = (append_dims(c, x_t.ndim).to(x_t.dtype) for c in (coef_xt, coef_x0))
        mean = coef_xt * x_t + coef_x0 * x0
        return mean, var_ts * sigma_s**2 / sigma_t**2

    # ---------------------------------------------------------------- prior, training and sampling times

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that approximates the marginal at t_max."""
        return float(self._alpha_sigma(_float64(self.t_max))[1])

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """x_T ~ N(0, prior_std^2 I), from given standard-normal noise or drawn with generator."""
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the prior sample needs {tuple(shape)}")
        return self.prior_std * noise

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at z (N, ...), summed over all but the batch dim -> (N,)."""
        var = self.prior_std**2
        logp = -0.5 * z**2 / var - 0.5 * math.log(2 * math.pi * var)
        return logp.flatten(1).sum(1)

    def sample_train_t(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """Training times (n,) float32: uniform over the integer steps (discrete) or over [t_min, t_max].

        float32 whatever the default dtype (bf16-true makes it bf16 inside the training step, where step 999
        would round to 1000 and t in [0, 1] to 8 bits)."""
        if self.discrete:
            low, high = int(self.t_min), int(self.t_max) + 1
            return torch.randint(low, high, (n,), generator=generator, device=device).float()
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        return self.t_min + (self.t_max - self.t_min) * u

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of lambda(t) on [t_min, t_max] by bisection (lambda is decreasing), float64."""
        target = _float64(log_snr)
        lo = torch.full_like(target, self.t_min)
        hi = torch.full_like(target, self.t_max)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            alpha, sigma = self._alpha_sigma(mid)
            too_early = alpha.log() - sigma.log() > target  # still above the target SNR: go later
            lo = torch.where(too_early, mid, lo)
            hi = torch.where(too_early, hi, mid)
        return 0.5 * (lo + hi)

    def timesteps(
        self,
        num_steps: int,
        device: torch.device | str = "cpu",
        t_start: float | None = None,
        spacing: Spacing = "time",
        rho: float = 7.0,
    ) -> Tensor:
        """Decreasing float64 sampling grid of num_steps times from t_start (default t_max) to t_min.

        spacing "time": evenly spaced in process time (DDPM's evenly spaced respacing, score_sde's grid);
        "logsnr": evenly spaced in lambda (geometric in sigma for VE / NCSN, where it equals "time");
        "karras": Karras et al.'s (2022) rho-spacing of sigma / alpha. Discrete processes round to their
        integer steps, so a grid never holds a time the network was not trained on; where a spacing puts
        several times between two integer steps, they merge and the grid has fewer than num_steps times.
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        if spacing not in get_args(Spacing):
            raise ValueError(f"unknown grid spacing {spacing!r}; choose one of {get_args(Spacing)}")
        t_start = self.t_max if t_start is None else float(t_start)
        if not self.t_min <= t_start <= self.t_max:
            raise ValueError(f"t_start={t_start} is outside the time range [{self.t_min}, {self.t_max}]")
        if self.discrete:
            t_start = float(round(t_start))
            available = int(t_start - self.t_min) + 1
            if num_steps > available:
                raise ValueError(
                    f"{self.name} has only {available} steps from t={t_start:g} down, asked for {num_steps}; "
                    f"use at most {available} steps"
                )
        u = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
        if spacing == "time":
            grid = t_start + u * (self.t_min - t_start)
        else:
            lambda_first, lambda_last = (float(self.log_snr(_float64(t))) for t in (t_start, self.t_min))
            if spacing == "logsnr":
                log_snr = lambda_first + u * (lambda_last - lambda_first)
            else:  # sigma / alpha = exp(-lambda), rho-spaced
                first, last = math.exp(-lambda_first / rho), math.exp(-lambda_last / rho)
                log_snr = -rho * torch.log(first + u * (last - first))
            grid = self.t_from_log_snr(log_snr)
        grid[0], grid[-1] = t_start, self.t_min  # exact ends despite rounding in the spacing
        if self.discrete:
            grid = torch.unique_consecutive(grid.round())
        return grid.to(device)

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, Tensor)
        )
        return f"{type(self).__name__}({args})"
