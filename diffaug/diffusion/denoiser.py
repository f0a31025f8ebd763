"""The parameterisation layer between a raw network and a noise process (in the spirit of EDM's
preconditioning), and classifier-free guidance.

The network sees c_in x_t with c_in = 1 / sqrt(alpha^2 + sigma^2), which gives unit-variance inputs for
unit-variance data: the identity for VP and DDPM, and a rescaling by up to 1/50 for VE and NCSN, whose raw
x_t reaches sigma_max. Its output is read as one of the four equivalent predictions and converted into all
of them:

- "eps":   the noise eps.
- "x0":    the clean data x0.
- "v":     v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2) (Salimans & Ho 2022, normalised so that the
           target keeps unit variance on VE / NCSN too; the usual v for VP).
- "score": sigma * score = sigma * grad log p_t(x_t) (= -eps_hat), the noise-scaled score of NCSNv2 and
           score_sde's scale_by_sigma, since a raw score grows like 1 / sigma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from diffaug.diffusion.process import GaussianProcess, append_dims

Prediction = Literal["eps", "x0", "v", "score"]

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
        cls, prediction: Prediction, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor
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
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {get_args(Prediction)}")
        v = (alpha * eps - sigma * x0) / r2.sqrt()
        return cls(x0=x0, eps=eps, v=v, score=-eps / sigma)


class Denoiser(nn.Module):
    """Wraps a raw network ``net(x, noise_level, class_labels)`` into
    ``denoiser(x_t, t, class_labels) -> x0_hat``.

    num_classes None or 0: unconditional (the network gets class_labels=None). Otherwise labels are in
    [0, num_classes], where ``null_class == num_classes`` is the learned unconditional class; missing
    labels mean the null class.
    """

    def __init__(
        self,
        net: nn.Module,
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
        if class_labels.shape != (n,) or class_labels.is_floating_point():
            raise ValueError(
                f"class_labels must be an integer tensor of shape ({n},), got {class_labels.dtype} "
                f"of shape {tuple(class_labels.shape)}"
            )
        # Reading the values back would stall a GPU stream at every network call: CPU tensors only. On a
        # GPU an out-of-range label still fails, in the class embedding (a device-side assert).
        if n and class_labels.device.type == "cpu" and (
            int(class_labels.min()) < 0 or int(class_labels.max()) > self.num_classes
        ):
            raise ValueError(
                f"class_labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                f"got values in [{int(class_labels.min())}, {int(class_labels.max())}]"
            )
        return class_labels.long()

    def predict(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Predictions:
        """x_t (N, C, H, W), t (N,) or 0-d process time -> all parameterisations of the network's output."""
        n = x_t.shape[0]
        t = t.expand(n) if t.ndim == 0 else t
        dtype = torch.promote_types(x_t.dtype, torch.float32)  # conversions stay in full precision
        alpha, sigma = (append_dims(c, x_t.ndim).to(dtype) for c in self.process.alpha_sigma(t))
        c_in = (alpha**2 + sigma**2).rsqrt()
        noise_level = self.process.noise_level(t).to(dtype)  # float32 even for bf16 inputs: 999 != 1000
        # The input in the weights' dtype: float32 noise into a bf16 net (bf16-true, bf16 weights), or bf16
        # training images into the float32 EMA. Autocast (bf16-mixed) keeps float32 weights and inputs.
        weight = next(self.net.parameters(), None)
        x_in = (c_in * x_t).to(x_t.dtype if weight is None else weight.dtype)
        output = self.net(x_in, noise_level, self._labels(class_labels, n, x_t.device))
        return Predictions.from_output(self.prediction, output.to(dtype), x_t.to(dtype), alpha, sigma)

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
