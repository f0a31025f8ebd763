"""DDPM (Ho et al. 2020; Nichol & Dhariwal 2021): a discrete Markov chain with a beta schedule.

Time is the step index t in {0, ..., N-1} (alpha_bar[0] = 1 - beta[0]: step 0 already holds a little
noise; clean data sits at t = -1). Between steps, log(alpha_bar) is interpolated linearly, which makes
the chain a VP process with piecewise-constant beta(t) = -log(1 - beta_i) per unit of index time,
the continuous-time limit of Song et al. (2021) that lets SDE and ODE samplers run on DDPM.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from diffaug.diffusion.process import PROCESSES, GaussianProcess, append_dims

BetaSchedule = Literal["linear", "cosine"]


def make_beta_schedule(
    schedule: BetaSchedule,
    num_timesteps: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> Tensor:
    """float64 betas (N,). "linear": Ho et al.'s range rescaled by 1000/N so any N spans the same noise
    (improved-diffusion); "cosine": Nichol & Dhariwal's alpha_bar(t) = cos^2(((t/N + s)/(1 + s)) pi/2)."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {get_args(BetaSchedule)}")


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """num_steps evenly spaced step indices of an N-step chain, first N-1 and last 0, decreasing."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    return [int(i) for i in torch.linspace(num_timesteps - 1, 0, num_steps, dtype=torch.float64).round()]


def respaced_betas(alphas_cumprod: Tensor, timesteps: list[int]) -> Tensor:
    """Betas of the chain that visits only `timesteps` (any order), as in improved-diffusion's respace.py:
    beta'_k = 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}], in increasing step order.

    Sampling on a grid with ``GaussianProcess.posterior`` between consecutive grid times is exactly
    ancestral sampling of this respaced chain.
    """
    alpha_bar = alphas_cumprod[sorted(timesteps)]
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous


@PROCESSES.register("ddpm")
class DDPMProcess(GaussianProcess):
    """noise_level(t) = 1000 t / N: the step index for the usual N = 1000 (improved-diffusion's
    rescale_timesteps for other N); rescale_timesteps=False hands the network the raw step index t, as
    guided-diffusion and some improved-diffusion models were trained (the same for N = 1000)."""

    name = "ddpm"
    discrete = True
    default_weighting = "simple"  # Ho et al.'s L_simple

    def __init__(
        self,
        *,
        num_timesteps: int = 1000,
        schedule: BetaSchedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_s: float = 0.008,
        rescale_timesteps: bool = True,
    ):
        if not isinstance(num_timesteps, int) or num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
        if schedule not in get_args(BetaSchedule):
            raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {get_args(BetaSchedule)}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        super().__init__(t_min=0.0, t_max=float(num_timesteps - 1))
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.cosine_s = cosine_s
        self.rescale_timesteps = bool(rescale_timesteps)
        self.betas = make_beta_schedule(
            schedule, num_timesteps, beta_start=beta_start, beta_end=beta_end, cosine_s=cosine_s
        )  # (N,) float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        self.alphas_cumprod_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        # log(alpha_bar) at knots t = -1, 0, ..., N-1; alpha_bar(-1) = 1 is the clean data.
        self._log_alpha_bar = torch.cat([self.alphas_cumprod.new_zeros(1), self.alphas_cumprod.log()])
        # The table on each device it was used on: a copy per call would be a host-to-device transfer at
        # every training step and sampler step.
        self._tables: dict[torch.device, Tensor] = {}

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Knot index k and weight w with t in (k - 1, k]: interpolation between knots k and k + 1."""
        pos = t.clamp(-1.0, self.t_max) + 1
        k = (pos.ceil() - 1).clamp(0, self.num_timesteps - 1).long()
        return k, pos - k

    def _log_alpha_bar_at(self, t: Tensor) -> tuple[Tensor, Tensor]:
        table = self._tables.get(t.device)
        if table is None:
            table = self._tables[t.device] = self._log_alpha_bar.to(t.device)
        k, w = self._segment(t)
        slope = table[k + 1] - table[k]  # d log(alpha_bar) / dt on the segment
        return table[k] + w * slope, slope

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha_bar, _ = self._log_alpha_bar_at(t)
        return (0.5 * log_alpha_bar).exp(), (-torch.expm1(log_alpha_bar)).sqrt()

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _, slope = self._log_alpha_bar_at(t)
        return 0.5 * slope, (-slope).sqrt()

    def noise_level(self, t: Tensor) -> Tensor:
        return t * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance (N,) of q(x_{t-1} | x_t, x0) for integer steps t (N,) (Ho et al. eq. 7)."""
        idx = t.long().cpu()
        beta, alpha_bar = self.betas[idx], self.alphas_cumprod[idx]
        alpha_bar_prev = self.alphas_cumprod_prev[idx]
        coef_x0 = beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)
        coef_xt = (1 - alpha_bar_prev) * (1 - beta).sqrt() / (1 - alpha_bar)
        var = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
        coef_x0, coef_xt, var = (c.to(device=x0.device, dtype=x0.dtype) for c in (coef_x0, coef_xt, var))
        return append_dims(coef_x0, x0.ndim) * x0 + append_dims(coef_xt, x_t.ndim) * x_t, var
