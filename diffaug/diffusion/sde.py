"""The continuous-time SDEs of Song et al. (2021) on t in [t_min, 1]: VP, sub-VP and VE.

noise_level(t) = 1000 t for all three; for VE this is a rescaled log-sigma, since log sigma(t) is
linear in t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffaug.diffusion.process import PROCESSES, GaussianProcess


def _check_time_range(t_min: float) -> None:
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")


class _VPFamily(GaussianProcess):
    """beta(t) = beta_min + t (beta_max - beta_min); alpha(t) = exp(-int_0^t beta / 2)."""

    discrete = False

    def __init__(self, *, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        _check_time_range(t_min)
        super().__init__(t_min=t_min, t_max=1.0)
        self.beta_min = beta_min
        self.beta_max = beta_max

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def noise_level(self, t: Tensor) -> Tensor:
        return 1000.0 * t


@PROCESSES.register("vp")
class VPSDE(_VPFamily):
    """Variance preserving: sigma^2 = 1 - alpha^2, dx = -beta x / 2 dt + sqrt(beta) dW (continuous DDPM)."""

    name = "vp"

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = self._log_alpha(t)
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self._beta(t)
        return -0.5 * beta, beta.sqrt()


@PROCESSES.register("subvp")
class SubVPSDE(_VPFamily):
    """Sub-VP: sigma = 1 - alpha^2 (variance below VP's), g^2 = beta (1 - alpha^4)."""

    name = "subvp"

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = self._log_alpha(t)
        return log_alpha.exp(), -torch.expm1(2 * log_alpha)

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self._beta(t)
        return -0.5 * beta, (beta * -torch.expm1(4 * self._log_alpha(t))).sqrt()


@PROCESSES.register("ve")
class VESDE(GaussianProcess):
    """Variance exploding: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t, f = 0,
    g = sigma(t) sqrt(2 log(sigma_max / sigma_min)) (continuous NCSN)."""

    name = "ve"
    discrete = False

    def __init__(self, *, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        _check_time_range(t_min)
        super().__init__(t_min=t_min, t_max=1.0)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * torch.exp(self._log_ratio * t)
        return torch.ones_like(sigma), sigma

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _, sigma = self._alpha_sigma(t)
        return torch.zeros_like(sigma), sigma * math.sqrt(2 * self._log_ratio)

    def noise_level(self, t: Tensor) -> Tensor:
        return 1000.0 * t
