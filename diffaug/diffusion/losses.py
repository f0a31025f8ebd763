"""Training objectives: per-sample denoising losses under the standard weightings, and CFG label dropout.

Every weighting is a weight w(t) on the data-space error ||x0_hat - x0||^2; the loss is computed in the
space of the regression target (eps, x0 or v) and rescaled, because the three errors differ only by
t-dependent factors: ||d eps||^2 = SNR ||d x0||^2 and ||d v||^2 = (SNR + 1) ||d x0||^2 with
SNR = alpha^2 / sigma^2. Weightings:

- "simple":        plain MSE on the target, DDPM's L_simple (Ho et al. 2020); the default for DDPM.
- "sigma2":        denoising score matching with lambda(t) = sigma^2 (Song & Ermon 2019; Song et al. 2021),
                   i.e. ||sigma s_hat + eps||^2 = eps-MSE whatever the target; the default for NCSN and SDEs.
- "likelihood":    lambda(t) = g(t)^2, the likelihood weighting of Song et al. (2021).
- "min_snr":       min(SNR, gamma) (Hang et al. 2023, min-SNR-gamma).
- "truncated_snr": max(SNR, 1) (Salimans & Ho 2022).

Losses are means over all non-batch dimensions, so their scale does not depend on the image size.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from diffaug.diffusion.denoiser import Predictions
from diffaug.diffusion.process import GaussianProcess, append_dims

Target = Literal["eps", "x0", "v"]

Weighting = Literal["simple", "sigma2", "likelihood", "min_snr", "truncated_snr"]

DEFAULT_WEIGHTING = {"ddpm": "simple", "ncsn": "sigma2", "vp": "sigma2", "subvp": "sigma2", "ve": "sigma2"}


def drop_labels(
    labels: Tensor, p: float, null_class: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by null_class with probability p (classifier-free guidance training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must be in [0, 1], got {p}")
    drop = torch.rand(labels.shape, generator=generator, device=labels.device, dtype=torch.float32) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class Objective:
    """Denoising loss of a process under one weighting.

    target: the regression target; None follows the denoiser's own prediction ("score" nets regress
    sigma * score = -eps, so they use the eps target).
    """

    def __init__(
        self,
        process: GaussianProcess,
        *,
        weighting: str | None = None,
        target: Target | None = None,
        min_snr_gamma: float = 5.0,
    ):
        self.process = process
        weighting = DEFAULT_WEIGHTING[process.name] if weighting is None else weighting
        if weighting not in get_args(Weighting):
            raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {get_args(Weighting)}")
        self.weighting: Weighting = weighting
        if target is not None and target not in get_args(Target):
            raise ValueError(f"unknown loss target {target!r}; choose one of {get_args(Target)} or None")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.target = target
        self.min_snr_gamma = min_snr_gamma

    def _target(self, denoiser) -> Target:
        if self.target is not None:
            return self.target
        prediction = getattr(denoiser, "prediction", None)
        if prediction not in ("eps", "x0", "v", "score"):
            raise ValueError(f"cannot infer the loss target from a denoiser with prediction {prediction!r}; "
                             f"pass target= one of {get_args(Target)}")
        return "eps" if prediction == "score" else prediction

    def weight(self, t: Tensor, target: Target) -> Tensor:
        """Factor (N,) on the target-space squared error that realises the weighting."""
        if self.weighting == "simple":
            return torch.ones_like(t)
        alpha, sigma = self.process.alpha_sigma(t)
        snr = alpha**2 / sigma**2
        if self.weighting == "sigma2":
            x0_weight = snr
        elif self.weighting == "likelihood":
            _, g = self.process.sde(t)
            # g^2 ||s_hat - s||^2 with s_hat - s = alpha (x0_hat - x0) / sigma^2
            x0_weight = g**2 * snr / sigma**2
        elif self.weighting == "min_snr":
            x0_weight = snr.clamp(max=self.min_snr_gamma)
        else:
            x0_weight = snr.clamp(min=1.0)
        native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[target]  # target error / x0 error
        return x0_weight / native

    def loss(
        self,
        denoiser,
        x0: Tensor,
        class_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample loss (N,) and the training times t (N,) it was drawn at.

        denoiser: a Denoiser, or anything with ``predict(x_t, t, class_labels) -> Predictions`` (and a
        ``prediction`` attribute when target is None). generator must live on x0's device.
        """
        target = self._target(denoiser)
        n = x0.shape[0]
        t = self.process.sample_train_t(n, x0.device, generator)  # (N,)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (N, C, H, W)
        x_t = self.process.q_sample(x0, t, eps)
        pred: Predictions = denoiser.predict(x_t, t, class_labels)
        if target == "eps":
            error = pred.eps - eps
        elif target == "x0":
            error = pred.x0 - x0
        else:
            alpha, sigma = (append_dims(c, x0.ndim) for c in self.process.alpha_sigma(t))
            error = pred.v - (alpha * eps - sigma * x0) / (alpha**2 + sigma**2).sqrt()
        mse = error.to(torch.promote_types(error.dtype, torch.float32)).pow(2).flatten(1).mean(1)  # (N,)
        return self.weight(t, target).to(mse.dtype) * mse, t


def build_objective(
    process: GaussianProcess,
    *,
    weighting: str | None = None,
    target: Target | None = None,
    min_snr_gamma: float = 5.0,
) -> Objective:
    """The objective for a process; weighting None picks the process's standard one (DEFAULT_WEIGHTING)."""
    return Objective(process, weighting=weighting, target=target, min_snr_gamma=min_snr_gamma)


def bucket_losses(
    loss: Tensor, t: Tensor, process: GaussianProcess, num_buckets: int = 4
) -> dict[str, float]:
    """Mean loss per noise-level bucket: t normalised to [0, 1] over the process range and cut into
    num_buckets equal intervals, keyed "t0.00-0.25" etc.; empty buckets are left out."""
    u = ((t - process.t_min) / (process.t_max - process.t_min)).clamp(0.0, 1.0)
    index = (u * num_buckets).long().clamp(max=num_buckets - 1)
    out: dict[str, float] = {}
    for b in range(num_buckets):
        mask = index == b
        if bool(mask.any()):
            out[f"t{b / num_buckets:.2f}-{(b + 1) / num_buckets:.2f}"] = float(loss[mask].mean())
    return out
