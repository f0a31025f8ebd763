"""Test fixtures for the diffusion code: a Gaussian mixture with its exact (Bayes-optimal) denoiser, and a
tiny real network.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha x0 + sigma eps, each component gives
x_t | k ~ N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) and E[x0 | x_t, k] = mu_k + alpha Sigma_k
(alpha^2 Sigma_k + sigma^2 I)^-1 (x_t - alpha mu_k); E[x0 | x_t] mixes these with the posterior
responsibilities. Component k is class k; the null class (index K) means the whole mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from diffaug.diffusion import GaussianProcess, Predictions, append_dims


@pytest.fixture(autouse=True)
def single_thread():
    """Import into a test module to run it single-threaded: with tensors this small, handing work to a second
    thread on a shared machine costs more than it saves (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class GaussianMixture:
    means: Tensor  # (K, d)
    covs: Tensor  # (K, d, d)
    weights: Tensor  # (K,)

    def __post_init__(self):
        self.means, self.covs, self.weights = (v.double() for v in (self.means, self.covs, self.weights))
        self.weights = self.weights / self.weights.sum()
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # (K, d), (K, d, d)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(
        self, n: int, generator: torch.Generator, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """n points (n, d) float64 and their components (n,); components drawn by weight unless given."""
        if labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigvecs[labels] * self.eigvals[labels].sqrt()[:, None, :]  # (n, d, d): Sigma^(1/2)
        return self.means[labels] + torch.einsum("nij,nj->ni", scale, z), labels

    def posterior_mean(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, allowed: Tensor | None = None
    ) -> Tensor:
        """E[x0 | x_t = x] for x (n, d), alpha, sigma (n,); allowed (n, K) bool restricts the components."""
        a, s2 = alpha[:, None, None], (sigma**2)[:, None, None]
        var = a**2 * self.eigvals[None] + s2  # (n, K, d): eigenvalues of alpha^2 Sigma_k + sigma^2 I
        y = torch.einsum("kji,nkj->nki", self.eigvecs, x[:, None, :] - a * self.means[None])  # (n, K, d)
        log_p = self.weights.log()[None] - 0.5 * (var.log() + y**2 / var).sum(-1)  # (n, K), up to a constant
        if allowed is not None:
            log_p = log_p.masked_fill(~allowed, -math.inf)
        resp = log_p.softmax(-1)  # (n, K)
        shrunk = torch.einsum("kij,nkj->nki", self.eigvecs, a * self.eigvals[None] / var * y)  # (n, K, d)
        return torch.einsum("nk,nki->ni", resp, self.means[None] + shrunk)

    def assign(self, x: Tensor) -> Tensor:
        """Nearest component mean for each point (n, d) -> (n,)."""
        return torch.cdist(x.double(), self.means).argmin(1)


class MixtureOracle:
    """The exact denoiser of a GaussianMixture under a process: (x_t, t, class_labels) -> x0_hat.

    Samples are shaped (N, *sample_shape) with prod(sample_shape) = d. prediction is only used to pick
    the loss target when the oracle stands in for a Denoiser in an Objective.
    """

    def __init__(self, mixture: GaussianMixture, process: GaussianProcess, prediction: str = "x0"):
        self.mixture = mixture
        self.process = process
        self.prediction = prediction
        self.null_class = mixture.num_components
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.calls += 1
        n = x_t.shape[0]
        t = t.expand(n) if t.ndim == 0 else t
        alpha, sigma = self.process.alpha_sigma(t.double())
        allowed = None
        if class_labels is not None:
            k = self.mixture.num_components
            components = torch.arange(k, device=x_t.device)
            allowed = (components[None] == class_labels[:, None]) | (class_labels[:, None] == k)
        x0 = self.mixture.posterior_mean(x_t.reshape(n, -1).double(), alpha, sigma, allowed)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def predict(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Predictions:
        alpha, sigma = (append_dims(c.double(), x_t.ndim) for c in self.process.alpha_sigma(t))
        x0 = self(x_t.double(), t, class_labels)
        return Predictions.from_output("x0", x0, x_t.double(), alpha, sigma)


def three_component_mixture() -> GaussianMixture:
    """Three well separated (>= 5 std), anisotropic, unequally weighted components in 2-d."""
    def rotated(std_major: float, std_minor: float, angle: float) -> Tensor:
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        return rot @ torch.diag(torch.tensor([std_major**2, std_minor**2], dtype=torch.float64)) @ rot.T

    return GaussianMixture(
        means=torch.tensor([[1.5, 0.3], [-1.2, 1.1], [-0.6, -1.5]]),
        covs=torch.stack([rotated(0.35, 0.2, 0.5), rotated(0.3, 0.3, 0.0), rotated(0.4, 0.18, -1.0)]),
        weights=torch.tensor([0.5, 0.3, 0.2]),
    )


@dataclass
class MixtureFit:
    """Per-component statistics of samples assigned to their nearest component."""

    weight_error: float  # max |fraction - w_k|
    mean_error: float  # max over components of |mean - mu_k| in units of the component's smallest std
    cov_error: float  # max over components of ||Cov - Sigma_k||_F / ||Sigma_k||_F

    def __str__(self) -> str:
        return f"weights {self.weight_error:.4f}, means {self.mean_error:.3f} std, covs {self.cov_error:.3f}"


def fit_mixture(samples: Tensor, mixture: GaussianMixture, weights: Tensor | None = None) -> MixtureFit:
    """Compare samples (N, ...) against the mixture (or against `weights` for the component fractions)."""
    x = samples.reshape(samples.shape[0], -1).double()
    if not torch.isfinite(x).all():
        return MixtureFit(math.inf, math.inf, math.inf)
    labels = mixture.assign(x)
    target = mixture.weights if weights is None else weights.double()
    fractions = torch.bincount(labels, minlength=mixture.num_components).double() / len(x)
    mean_err, cov_err = 0.0, 0.0
    for k in range(mixture.num_components):
        xk = x[labels == k]
        if target[k] == 0:
            continue
        if len(xk) < 10:
            return MixtureFit(float((fractions - target).abs().max()), math.inf, math.inf)
        min_std = mixture.eigvals[k].min().sqrt()
        mean_err = max(mean_err, float((xk.mean(0) - mixture.means[k]).norm() / min_std))
        cov = torch.cov(xk.T)
        cov_err = max(cov_err, float((cov - mixture.covs[k]).norm() / mixture.covs[k].norm()))
    return MixtureFit(float((fractions - target).abs().max()), mean_err, cov_err)


class TinyNet(nn.Module):
    """A small trainable network with the project's signature net(x, noise_level, class_labels)."""

    def __init__(self, channels: int = 2, num_classes: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.level = nn.Linear(2, channels)
        self.classes = nn.Embedding(num_classes + 1, channels) if num_classes else None
        self.seen: dict[str, torch.Tensor | None] = {}

    def forward(self, x, noise_level, class_labels=None):
        self.seen = {"x": x, "noise_level": noise_level, "class_labels": class_labels}
        phase = noise_level[:, None] / 1000 * math.pi
        h = self.conv(x) + self.level(torch.cat([phase.sin(), phase.cos()], 1))[:, :, None, None]
        if self.classes is not None:
            h = h + self.classes(class_labels)[:, :, None, None]
        return torch.tanh(h) + 0.1 * x
