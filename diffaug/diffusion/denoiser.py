"""The parameterisation layer between a raw network and a noise process (EDM's preconditioning), and
classifier-free guidance.

A :class:`Preconditioning` turns a raw network F into a denoiser (Karras et al. 2022, table 1):
F sees c_in x_t and the conditioning value c_noise, and x0_hat = c_skip x_t + c_out F. Every
parameterisation feeds F with c_in = 1 / sqrt(sigma^2 + alpha^2 sigma_data^2) (unit-variance inputs for
data of standard deviation sigma_data: the identity for VP and DDPM with sigma_data = 1, a rescaling by up
to 1/50 for VE and NCSN, whose raw x_t reaches sigma_max) and c_noise = ``process.noise_level(t)``. The
output is read as one of the four predictions below, whose c_skip / c_out follow from their definition,
or with EDM's own choice:

- "eps":   the noise eps (c_skip = 1 / alpha, c_out = -sigma / alpha).
- "x0":    the clean data x0 (c_skip = 0, c_out = 1).
- "v":     v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2) (Salimans & Ho 2022, normalised so that the
           target keeps unit variance on VE / NCSN too; the usual v for VP).
- "score": sigma * score = sigma * grad log p_t(x_t) (= -eps_hat), the noise-scaled score of NCSNv2 and
           score_sde's scale_by_sigma, since a raw score grows like 1 / sigma.
- "edm":   EDM's c_skip = sigma_data^2 / (s^2 + sigma_data^2), c_out = s sigma_data / sqrt(s^2 + sigma_data^2)
           on x_t / alpha, with EDM's noise level s = sigma / alpha; sigma_data = 0.5.

The first four are converted with their own formulas (:meth:`Predictions.from_output`), not through
c_skip and c_out, which would change the last bits of their outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor, nn

from diffaug.diffusion.process import GaussianProcess, append_dims
from diffaug.nets.checks import check_class_labels

if TYPE_CHECKING:  # the contract only: diffusion does not depend on the networks
    from diffaug.nets.protocol import DenoiserNet

Parameterisation = Literal["eps", "x0", "v", "score"]  # what the network's output is read as
Prediction = Literal[Parameterisation, "edm"]
EDM_SIGMA_DATA = 0.5  # the standard deviation of images in [-1, 1] that EDM assumes (Karras et al. 2022)

# Anything called as denoiser(x_t, t, class_labels) -> x0_hat: a Denoiser or an analytic oracle.
DenoiserFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class Predictions:
    """All parameterisations of one prediction; tensors shaped like x_t."""

    x0: Tensor
    eps: Tensor
    v: Tensor
    score: Tensor

    @classmethod
    def from_output(
        cls, prediction: Parameterisation, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Predictions:
        """Interpret output as `prediction` for x_t = alpha x0 + sigma eps; alpha, sigma broadcast to x_t."""
        r2 = alpha**2 + sigma**2
        if prediction == "eps":
            eps = output
            x0 = (x_t - sigma * eps) / alpha
        elif prediction == "x0":
            x0 = output
            eps = (x_t - alpha * x0) / sigma
        elif prediction == "v":
            x0 = alpha / r2 * x_t - sigma / r2.sqrt() * output
            eps = sigma / r2 * x_t + alpha / r2.sqrt() * output
        elif prediction == "score":
            eps = -output
            x0 = (x_t - sigma * eps) / alpha
        else:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {get_args(Parameterisation)}")
        v = (alpha * eps - sigma * x0) / r2.sqrt()
        return cls(x0=x0, eps=eps, v=v, score=-eps / sigma)


@dataclass(frozen=True)
class Preconditioning:
    """c_skip, c_out, c_in, c_noise of one batch; every tensor broadcasts against x_t (c_noise: (N,))."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor

    @classmethod
    def of(
        cls,
        prediction: Prediction,
        alpha: Tensor,
        sigma: Tensor,
        c_noise: Tensor,
        sigma_data: float = EDM_SIGMA_DATA,
    ) -> Preconditioning:
        """The coefficients of a parameterisation at alpha, sigma (broadcast to x_t)."""
        if prediction == "edm":
            s = sigma / alpha  # EDM's sigma: x_t / alpha = x0 + s eps
            r2 = s**2 + sigma_data**2
            return cls(c_skip=sigma_data**2 / r2 / alpha, c_out=s * sigma_data / r2.sqrt(),
                       c_in=r2.rsqrt() / alpha, c_noise=c_noise)
        c_in = (alpha**2 + sigma**2).rsqrt()  # = 1 / sqrt(sigma^2 + alpha^2 sigma_data^2), sigma_data = 1
        c_skip, c_out = {
            "eps": (1 / alpha, -sigma / alpha),
            "x0": (torch.zeros_like(alpha), torch.ones_like(alpha)),
            "v": (alpha * c_in**2, -sigma * c_in),
            "score": (1 / alpha, sigma / alpha),
        }[prediction]
        return cls(c_skip=c_skip, c_out=c_out, c_in=c_in, c_noise=c_noise)

    def denoised(self, output: Tensor, x_t: Tensor) -> Tensor:
        """x0_hat = c_skip x_t + c_out F."""
        return self.c_skip * x_t + self.c_out * output


class Denoiser(nn.Module):
    """Wraps a raw network ``net(x, noise_level, class_labels)`` into
    ``denoiser(x_t, t, class_labels) -> x0_hat``.

    num_classes None or 0: unconditional (the network gets class_labels=None). Otherwise labels are in
    [0, num_classes], where ``null_class == num_classes`` is the learned unconditional class; missing
    labels mean the null class.
    """

    def __init__(
        self,
        net: DenoiserNet,
        process: GaussianProcess,
        prediction: Prediction = "eps",
        num_classes: int | None = None,
    ):
        super().__init__()
        if prediction not in get_args(Prediction):
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {get_args(Prediction)}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
            raise ValueError(f"num_classes must be None or a non-negative integer, got {num_classes!r}")
        self.net = net
        self.process = process
        self.prediction: Prediction = prediction
        self.num_classes = num_classes or 0

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.conditional else None

    def _labels(self, class_labels: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        if not self.conditional:
            return None
        if class_labels is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        check_class_labels(class_labels, n, self.num_classes)  # the networks' own check, one message
        return class_labels.long()

    def predict(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Predictions:
        """x_t (N, C, H, W), t (N,) or 0-d process time -> all parameterisations of the network's output."""
        n = x_t.shape[0]
        t = t.expand(n) if t.ndim == 0 else t
        dtype = torch.promote_types(x_t.dtype, torch.float32)  # conversions stay in full precision
        alpha, sigma = (append_dims(c, x_t.ndim).to(dtype) for c in self.process.alpha_sigma(t))
        # c_noise in float32 even for bf16 inputs: 999 != 1000
        pre = Preconditioning.of(self.prediction, alpha, sigma, self.process.noise_level(t).to(dtype))
        # The input in the weights' dtype: float32 noise into a bf16 net (bf16-true, bf16 weights), or bf16
        # training images into the float32 EMA. Autocast (bf16-mixed) keeps float32 weights and inputs.
        weight = next(self.net.parameters(), None)
        x_in = (pre.c_in * x_t).to(x_t.dtype if weight is None else weight.dtype)
        output = self.net(x_in, pre.c_noise, self._labels(class_labels, n, x_t.device)).to(dtype)
        x_t = x_t.to(dtype)
        if self.prediction == "edm":
            return Predictions.from_output("x0", pre.denoised(output, x_t), x_t, alpha, sigma)
        return Predictions.from_output(self.prediction, output, x_t, alpha, sigma)

    def forward(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.predict(x_t, t, class_labels).x0


def guided_x0(
    denoiser: DenoiserFn,
    x_t: Tensor,
    t: Tensor,
    class_labels: Tensor | None,
    guidance_scale: float | Tensor,
    null_class: int | None,
) -> Tensor:
    """Classifier-free guidance: x0_uncond + w (x0_cond - x0_uncond), with the conditional and null-class
    predictions from one batched call. w (float or (N,) tensor) == 1 everywhere -> one conditional call."""
    if isinstance(guidance_scale, Tensor):
        all_one = bool((guidance_scale == 1).all())
    else:
        all_one = guidance_scale == 1.0
    if all_one:
        return denoiser(x_t, t, class_labels)
    if class_labels is None or null_class is None:
        raise ValueError(
            "classifier-free guidance (guidance_scale != 1) needs class_labels and a conditional denoiser "
            "with a null class; pass class labels or use guidance_scale=1"
        )
    n = x_t.shape[0]
    t = t.expand(n) if t.ndim == 0 else t
    null = torch.full_like(class_labels, null_class)
    x0_cond, x0_uncond = denoiser(
        torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([class_labels, null])
    ).chunk(2)
    w = append_dims(guidance_scale, x_t.ndim) if isinstance(guidance_scale, Tensor) else guidance_scale
    return x0_uncond + w * (x0_cond - x0_uncond)
