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
- "edm":           EDM's objective (Karras et al. 2022, :class:`EDMObjective`): log-normal noise levels and
                   lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

A process names its own default (``GaussianProcess.default_weighting``). The objective's keyword options
(``objective.args`` in a config) are checked by :func:`check_objective_options`.
Losses are means over all non-batch dimensions, so their scale does not depend on the image size.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from diffaug.diffusion.denoiser import Prediction, Predictions
from diffaug.diffusion.process import GaussianProcess, append_dims
from diffaug.registry import did_you_mean

Target = Literal["eps", "x0", "v"]

Weighting = Literal["simple", "sigma2", "likelihood", "min_snr", "truncated_snr"]
EDM = "edm"
WEIGHTINGS: tuple[str, ...] = (*get_args(Weighting), EDM)


def drop_labels(
    labels: Tensor, p: float, null_class: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by null_class with probability p (classifier-free guidance training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must be in [0, 1], got {p}")
    drop = torch.rand(labels.shape, generator=generator, device=labels.device, dtype=torch.float32) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def _check_target(target: str | None) -> None:
    if target is not None and target not in get_args(Target):
        raise ValueError(f"unknown loss target {target!r}; choose one of {get_args(Target)} or None")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")


class Objective:
    """Denoising loss of a process under one weighting.

    weighting: None takes the process's own (``process.default_weighting``). target: the regression
    target; None follows the denoiser's own prediction ("score" nets regress sigma * score = -eps, so they
    use the eps target). min_snr_gamma: the gamma of the "min_snr" weighting.
    """

    weightings: ClassVar[tuple[str, ...]] = get_args(Weighting)  # those this class implements

    def __init__(
        self,
        process: GaussianProcess,
        *,
        weighting: str | None = None,
        target: Target | None = None,
        min_snr_gamma: float = 5.0,
    ):
        self.process = process
        weighting = process.default_weighting if weighting is None else weighting
        if weighting not in self.weightings:
            raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
        self.weighting: str = weighting
        _check_target(target)
        _check_positive("min_snr_gamma", min_snr_gamma)
        self.target = target
        self.min_snr_gamma = min_snr_gamma

    def _target(self, denoiser) -> Target:
        if self.target is not None:
            return self.target
        prediction = getattr(denoiser, "prediction", None)
        if prediction not in get_args(Prediction):
            raise ValueError(f"cannot infer the loss target from a denoiser with prediction {prediction!r}; "
                             f"pass target= one of {get_args(Target)}")
        # EDM's network is trained through D, its x0_hat (Karras et al. 2022, eq. 2)
        return {"score": "eps", "edm": "x0"}.get(prediction, prediction)

    def sample_t(self, n: int, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        """Training times (n,): the process's own distribution (uniform over its steps or its range)."""
        return self.process.sample_train_t(n, device, generator)

    def x0_weight(self, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The weighting as a factor (N,) on the data-space error ||x0_hat - x0||^2 (all but "simple",
        which is 1 on the error of whatever the target is)."""
        snr = alpha**2 / sigma**2
        if self.weighting == "sigma2":
            return snr
        if self.weighting == "likelihood":
            _, g = self.process.sde(t)
            # g^2 ||s_hat - s||^2 with s_hat - s = alpha (x0_hat - x0) / sigma^2
            return g**2 * snr / sigma**2
        if self.weighting == "min_snr":
            return snr.clamp(max=self.min_snr_gamma)
        return snr.clamp(min=1.0)  # "truncated_snr"

    def weight(self, t: Tensor, target: Target) -> Tensor:
        """Factor (N,) on the target-space squared error that realises the weighting."""
        if self.weighting == "simple":
            return torch.ones_like(t)
        alpha, sigma = self.process.alpha_sigma(t)
        snr = alpha**2 / sigma**2
        native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[target]  # target error / x0 error
        return self.x0_weight(t, alpha, sigma) / native

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
        t = self.sample_t(n, x0.device, generator)  # (N,)
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


class EDMObjective(Objective):
    """EDM's training objective (Karras et al. 2022, section 5 and table 1) on any process.

    EDM's noise level is sigma_edm = sigma / alpha (x_t / alpha = x0 + sigma_edm eps); ln(sigma_edm) is drawn
    from N(p_mean, p_std^2) and mapped to the process's own time, clamped to its range [t_min, t_max] (for
    the VE SDE's defaults that clips about 0.2% of the draws, below sigma_min = 0.01). The data-space error
    is weighted by lambda = (sigma_edm^2 + sigma_data^2) / (sigma_edm sigma_data)^2.
    """

    weightings = (EDM,)

    def __init__(
        self,
        process: GaussianProcess,
        *,
        target: Target | None = None,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        super().__init__(process, weighting=EDM, target=target)
        _check_positive("sigma_data", sigma_data)
        _check_positive("p_std", p_std)
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def sample_t(self, n: int, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        log_sigma = self.p_mean + self.p_std * torch.randn(n, generator=generator, device=device)  # (N,)
        t = self.process.t_from_log_snr(-log_sigma)  # log-SNR = -ln(sigma_edm)
        return (t.round() if self.process.discrete else t).float()

    def x0_weight(self, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        sigma_edm = sigma / alpha
        return (sigma_edm**2 + self.sigma_data**2) / (sigma_edm * self.sigma_data) ** 2


def _objective_class(weighting: str) -> type[Objective]:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    return EDMObjective if weighting == EDM else Objective


def check_objective_options(weighting: str, options: Mapping[str, Any]) -> None:
    """TypeError for an option the weighting's objective does not take, ValueError for a bad value
    (a config's objective.args, checked when it is loaded)."""
    cls = _objective_class(weighting)
    parameters = inspect.signature(cls).parameters.values()
    valid = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "weighting"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"the objective of weighting {weighting!r} has no option(s) {unknown}; its options are: "
            f"{', '.join(valid)}.{did_you_mean(unknown[0], valid)}"
        )
    _check_target(options.get("target"))
    for name in ("min_snr_gamma", "sigma_data", "p_std"):
        if name in options:
            _check_positive(name, options[name])


def build_objective(process: GaussianProcess, *, weighting: str | None = None, **options: Any) -> Objective:
    """The objective for a process; weighting None picks the process's own (``default_weighting``),
    "edm" EDM's objective. options: the objective's keyword options (target, min_snr_gamma, ...)."""
    weighting = process.default_weighting if weighting is None else weighting
    check_objective_options(weighting, options)
    if _objective_class(weighting) is EDMObjective:
        return EDMObjective(process, **options)
    return Objective(process, weighting=weighting, **options)


def bucket_index(t: Tensor, process: GaussianProcess, num_buckets: int = 4) -> Tensor:
    """(N,) noise-level bucket of each time: t normalised to [0, 1] over the process range, cut into
    num_buckets equal intervals (improved-diffusion's loss quartiles)."""
    u = ((t - process.t_min) / (process.t_max - process.t_min)).clamp(0.0, 1.0)
    return (u * num_buckets).long().clamp(max=num_buckets - 1)


def bucket_names(num_buckets: int = 4) -> list[str]:
    """The buckets' metric suffixes, "t0.00-0.25" etc."""
    return [f"t{b / num_buckets:.2f}-{(b + 1) / num_buckets:.2f}" for b in range(num_buckets)]


def bucket_losses(
    loss: Tensor, t: Tensor, process: GaussianProcess, num_buckets: int = 4
) -> dict[str, float]:
    """Mean loss per noise-level bucket (see :func:`bucket_index`); empty buckets are left out."""
    index = bucket_index(t, process, num_buckets)
    return {
        name: float(loss[index == b].mean())
        for b, name in enumerate(bucket_names(num_buckets))
        if bool((index == b).any())
    }
