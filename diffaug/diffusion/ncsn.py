"""NCSN (Song & Ermon 2019): noise levels sigma_1 > ... > sigma_L in geometric progression, alpha = 1.

Time is the level index counted from the least noisy level: t = 0 is sigma_min and t = L - 1 is
sigma_max (the paper's sigma_L and sigma_1). log(sigma) is linear in t, so between levels the process is
exactly a VE SDE with f = 0 and g(t)^2 = d(sigma^2)/dt (Song et al. 2021), on which the SDE and ODE
samplers run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffaug.diffusion.process import PROCESSES, GaussianProcess


@PROCESSES.register("ncsn")
class NCSNProcess(GaussianProcess):
    """noise_level(t) = 1000 t / (L - 1) = 1000 (log sigma - log sigma_min) / (log sigma_max - log sigma_min),
    a rescaled log-sigma in [0, 1000], the same convention as the VE SDE."""

    name = "ncsn"
    discrete = True

    def __init__(self, *, sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 232):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if not isinstance(num_scales, int) or num_scales < 2:
            raise ValueError(f"num_scales must be an integer >= 2, got {num_scales!r}")
        super().__init__(t_min=0.0, t_max=float(num_scales - 1))
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.num_scales = num_scales
        self._log_ratio = math.log(sigma_max / sigma_min)

    @property
    def sigmas(self) -> Tensor:
        """The L noise levels in the paper's order, largest first (float64)."""
        return self._alpha_sigma(torch.arange(self.num_scales - 1, -1, -1, dtype=torch.float64))[1]

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * torch.exp(self._log_ratio * t / self.t_max)
        return torch.ones_like(sigma), sigma

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _, sigma = self._alpha_sigma(t)
        return torch.zeros_like(sigma), sigma * math.sqrt(2 * self._log_ratio / self.t_max)

    def noise_level(self, t: Tensor) -> Tensor:
        return t * (1000.0 / self.t_max)
