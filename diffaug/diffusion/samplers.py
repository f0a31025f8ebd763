"""Samplers for every process, written once against the uniform process view (alpha, sigma, f, g).

Each sampler is a plain function ``fn(denoise, process, grid, x, rng, **options) -> x0`` where
``denoise(x, t)`` returns the (guided) x0_hat at the grid time t, ``grid`` the decreasing float64 time
grid, ``x`` the starting noisy batch at grid[0] and ``rng`` the per-sample noise source. The network is
evaluated at the grid times only, and at the last grid time (t_min, a small but non-zero noise level) every
sampler returns the denoised x0_hat instead of the last noisy iterate (the final "denoising step" of
Ho et al. 2020, Song & Ermon 2019 and score_sde's noise_removal).

``steps`` is the number of grid times. Network evaluations per sample ("NFE", doubled under guidance):
ddpm, ddim, euler_maruyama, dpmpp_2m: steps; pc: steps * (1 + corrector_steps);
langevin: steps * n_steps_each + 1; pf_ode_heun: 2 steps - 1.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from diffaug.diffusion.denoiser import DenoiserFn, guided_x0
from diffaug.diffusion.process import GaussianProcess, Spacing
from diffaug.diffusion.rng import StackedRandomGenerator
from diffaug.registry import Registry

logger = logging.getLogger(__name__)

DenoiseAt = Callable[[Tensor, Tensor], Tensor]  # (x (N, C, H, W), t 0-d) -> x0_hat (N, C, H, W)
SamplerFn = Callable[..., Tensor]
SAMPLERS: Registry[SamplerFn] = Registry("sampler")

Predictor = Literal["reverse_diffusion", "euler"]

DEFAULT_SPACING: dict[str, Spacing] = {}  # sampler name -> the grid spacing it runs on unless told otherwise


def register_sampler(name: str, *, spacing: Spacing = "time") -> Callable[[SamplerFn], SamplerFn]:
    """Register a sampler function under ``name``, with the time grid spacing ``sample`` gives it by default
    (see GaussianProcess.timesteps). Its keyword-only parameters are its options (sampling.sampler_args)."""

    def decorator(fn: SamplerFn) -> SamplerFn:
        SAMPLERS.register(name)(fn)
        DEFAULT_SPACING[name] = spacing
        return fn

    return decorator


def _score(process: GaussianProcess, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    alpha, sigma = process.alpha_sigma(t)
    return (alpha * x0 - x) / sigma**2


def _steps(grid: Tensor):
    """Consecutive (t, s) pairs of the grid, s < t."""
    return zip(grid[:-1], grid[1:])


@register_sampler("ddpm")
def ddpm(
    denoise: DenoiseAt, process: GaussianProcess, grid: Tensor, x: Tensor, rng: StackedRandomGenerator
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020): x_s ~ q(x_s | x_t, x0 = x0_hat) between consecutive grid times.
    On a DDPM subgrid this is the respaced chain of improved-diffusion; on VE / NCSN, SMLD's ancestral
    step."""
    for t, s in _steps(grid):
        mean, var = process.posterior(denoise(x, t), x, t, s)
        x = mean + var.sqrt() * rng.randn_like(x)
    return denoise(x, grid[-1])


@register_sampler("ddim")
def ddim(
    denoise: DenoiseAt,
    process: GaussianProcess,
    grid: Tensor,
    x: Tensor,
    rng: StackedRandomGenerator,
    *,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021a): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z with
    c^2 = eta^2 Var[q(x_s | x_t, x0)]; eta = 0 is deterministic, eta = 1 is ancestral sampling."""
    for t, s in _steps(grid):
        x0 = denoise(x, t)
        alpha_t, sigma_t = process.alpha_sigma(t)
        alpha_s, sigma_s = process.alpha_sigma(s)
        eps = (x - alpha_t * x0) / sigma_t
        c2 = eta**2 * process.posterior_variance(t, s)
        x = alpha_s * x0 + (sigma_s**2 - c2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + c2.sqrt() * rng.randn_like(x)
    return denoise(x, grid[-1])


@register_sampler("euler_maruyama")
def euler_maruyama(
    denoise: DenoiseAt, process: GaussianProcess, grid: Tensor, x: Tensor, rng: StackedRandomGenerator
) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dW (Song et al. 2021)."""
    for t, s in _steps(grid):
        drift, diffusion = process.reverse_sde(x, t, _score(process, x, denoise(x, t), t))
        x = x + drift * (s - t) + diffusion * (t - s).sqrt() * rng.randn_like(x)  # s - t < 0: backwards
    return denoise(x, grid[-1])


def _langevin_step(
    denoise: DenoiseAt,
    process: GaussianProcess,
    x: Tensor,
    t: Tensor,
    snr: float,
    rng: StackedRandomGenerator,
) -> Tensor:
    """One Langevin MCMC step targeting p_t: x + e score + sqrt(2 e) z with e = 2 (snr sigma_t)^2.

    This is score_sde's step 2 (snr ||z|| / ||score||)^2 at its noise-dominated value
    ||score|| = ||z|| / sigma, fixed per noise level (Song & Ermon's step proportional to sigma^2) so that
    it depends neither on the batch nor on the random draw. Song & Ermon's step
    alpha_i = step_lr sigma_i^2 / sigma_L^2 (used as alpha_i / 2 score + sqrt(alpha_i) z) is
    snr = sqrt(step_lr) / (2 sigma_L).
    """
    _, sigma = process.alpha_sigma(t)
    step = 2 * (snr * sigma) ** 2
    score = _score(process, x, denoise(x, t), t)
    return x + step * score + (2 * step).sqrt() * rng.randn_like(x)


@register_sampler("langevin", spacing="logsnr")
def langevin(
    denoise: DenoiseAt,
    process: GaussianProcess,
    grid: Tensor,
    x: Tensor,
    rng: StackedRandomGenerator,
    *,
    n_steps_each: int = 5,
    snr: float = 0.16,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019): n_steps_each Langevin steps at every grid level."""
    for t in grid:
        for _ in range(n_steps_each):
            x = _langevin_step(denoise, process, x, t, snr, rng)
    return denoise(x, grid[-1])


@register_sampler("pc")
def predictor_corrector(
    denoise: DenoiseAt,
    process: GaussianProcess,
    grid: Tensor,
    x: Tensor,
    rng: StackedRandomGenerator,
    *,
    predictor: Predictor = "reverse_diffusion",
    corrector_steps: int = 1,
    snr: float = 0.16,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021): at each grid time, corrector_steps Langevin steps,
    then a predictor step to the next time: "reverse_diffusion" (the discretised reverse of the forward
    transition, x + (1 - alpha_ts) x + var_ts score + sqrt(var_ts) z) or "euler" (Euler-Maruyama)."""

    def correct(x: Tensor, t: Tensor) -> Tensor:
        for _ in range(corrector_steps):
            x = _langevin_step(denoise, process, x, t, snr, rng)
        return x

    for t, s in _steps(grid):
        x = correct(x, t)
        score = _score(process, x, denoise(x, t), t)
        if predictor == "euler":
            drift, diffusion = process.reverse_sde(x, t, score)
            x = x + drift * (s - t) + diffusion * (t - s).sqrt() * rng.randn_like(x)
        else:
            alpha_ts, var_ts = process.transition(t, s)
            x = (2 - alpha_ts) * x + var_ts * score + var_ts.sqrt() * rng.randn_like(x)
    return denoise(correct(x, grid[-1]), grid[-1])


@register_sampler("pf_ode_heun")
def pf_ode_heun(
    denoise: DenoiseAt, process: GaussianProcess, grid: Tensor, x: Tensor, rng: StackedRandomGenerator
) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Integrated in EDM's coordinates y = x / alpha against sigma_edm = sigma / alpha, where the ODE reads
    dy / d sigma_edm = (y - x0_hat) / sigma_edm: the same trajectories as dx = [f x - g^2 score / 2] dt,
    with far less curvature, so few steps suffice (a first-order step here is exactly DDIM).
    """
    for t, s in _steps(grid):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = process.alpha_sigma(t), process.alpha_sigma(s)
        sigma_edm_t, sigma_edm_s = sigma_t / alpha_t, sigma_s / alpha_s
        y = x / alpha_t
        d = (y - denoise(x, t)) / sigma_edm_t
        y_euler = y + (sigma_edm_s - sigma_edm_t) * d
        d_next = (y_euler - denoise(alpha_s * y_euler, s)) / sigma_edm_s
        x = alpha_s * (y + (sigma_edm_s - sigma_edm_t) * 0.5 * (d + d_next))
    return denoise(x, grid[-1])


@register_sampler("dpmpp_2m", spacing="logsnr")
def dpmpp_2m(
    denoise: DenoiseAt, process: GaussianProcess, grid: Tensor, x: Tensor, rng: StackedRandomGenerator
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): multistep 2nd-order solver of the probability-flow ODE with
    data prediction, exact in the linear part, stepping in lambda = log(alpha / sigma); the first step
    is first order (= DDIM)."""
    x0_prev, h_prev = None, None
    for t, s in _steps(grid):
        (_, sigma_t), (alpha_s, sigma_s) = process.alpha_sigma(t), process.alpha_sigma(s)
        h = process.log_snr(s) - process.log_snr(t)
        x0 = denoise(x, t)
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = sigma_s / sigma_t * x - alpha_s * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return denoise(x, grid[-1])


# ------------------------------------------------------------------------------------------ entry point


def sampling_grid(
    process: GaussianProcess,
    steps: int,
    strength: float | None = None,
    device: torch.device | str = "cpu",
    spacing: Spacing = "time",
) -> Tensor:
    """The decreasing float64 grid a sampler runs on. With an SDEdit strength in (0, 1] the grid starts at
    t_min + strength (t_max - t_min) and keeps round(strength * steps) of the steps (at least 1)."""
    if strength is None:
        return process.timesteps(steps, device, spacing=spacing)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"SDEdit strength must be in (0, 1], got {strength}")
    t_start = process.t_min + strength * (process.t_max - process.t_min)
    return process.timesteps(max(1, round(strength * steps)), device, t_start=t_start, spacing=spacing)


# The samplers' options that have a valid range: checked by check_sampler_options before any sampling,
# and when a config is loaded, so a bad value fails at once with its range.
OPTION_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "eta": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (0: deterministic DDIM, 1: ancestral)"),
    "snr": (lambda v: v > 0, "positive"),
    "n_steps_each": (lambda v: v >= 1, "at least 1"),
    "corrector_steps": (lambda v: v >= 0, "0 or more"),
    "predictor": (lambda v: v in get_args(Predictor), f"one of {', '.join(get_args(Predictor))}"),
}


def check_sampler_options(name: str, options: Mapping[str, Any]) -> None:
    """TypeError for an option sampler ``name`` does not take, ValueError for a value out of its range."""
    parameters = inspect.signature(SAMPLERS.get(name)).parameters.values()
    valid = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"sampler {name!r} has no option(s) {unknown}; its options are: {', '.join(valid) or 'none'}"
        )
    for key in sorted(set(options) & set(OPTION_RANGES)):
        ok, rule = OPTION_RANGES[key]
        try:
            fits = ok(options[key])
        except TypeError:  # e.g. a string where a number belongs
            fits = False
        if not fits:
            raise ValueError(f"sampler {name!r}: {key} must be {rule}, got {options[key]!r}")


def sample(
    name: str,
    denoiser: DenoiserFn,
    process: GaussianProcess,
    *,
    shape: Sequence[int],
    seeds: Sequence[int],
    class_labels: Tensor | None = None,
    steps: int,
    guidance_scale: float | Tensor = 1.0,
    x_start: Tensor | None = None,
    strength: float | None = None,
    device: torch.device | str = "cpu",
    spacing: Spacing | None = None,
    clip_x0: bool = False,
    guidance_interval: Sequence[float] | None = None,
    **options,
) -> Tensor:
    """Draw len(seeds) samples (N, C, H, W) with sampler `name` (see SAMPLERS.names()).

    denoiser(x_t, t, class_labels) -> x0_hat; it needs a ``null_class`` attribute for guidance_scale != 1.
    seeds: one int per sample; sample i uses only a generator seeded with seeds[i], for its initial noise
    and every stochastic step, so it never depends on the batch. guidance_scale: float or (N,) tensor.
    x_start + strength: SDEdit, start from q_sample(x_start, t) at t = t_min + strength (t_max - t_min)
    and run round(strength * steps) grid steps from there (see sampling_grid).
    spacing: the time grid (see GaussianProcess.timesteps); None takes the sampler's own default
    (DEFAULT_SPACING: "logsnr" for dpmpp_2m, which steps in lambda, and for langevin, which anneals
    sigma geometrically as NCSN does; "time" otherwise).
    clip_x0: clamp every x0_hat to [-1, 1], the data range of images (Ho et al.'s clipped sampling,
    improved-diffusion's clip_denoised): an eps-prediction at high noise divides by a small alpha, and the
    wild x0_hat of an imperfect model then drives samples into saturated speckle. Off for data that is not
    bounded (and for the exact-oracle tests).
    guidance_interval: (lo, hi): guide only at steps whose noise level sigma / alpha (EDM's sigma) lies in
    (lo, hi], and sample conditionally elsewhere (Kynkaanniemi et al. 2024, "Applying guidance in a limited
    interval improves sample and distribution quality"): guidance at high noise collapses the variety of
    the samples, at low noise it does little.
    options: the sampler's own keyword options (e.g. eta for "ddim").
    """
    fn = SAMPLERS.get(name)
    check_sampler_options(name, options)
    shape = tuple(int(s) for s in shape)
    n = shape[0]
    if len(seeds) != n:
        raise ValueError(f"need one seed per sample: shape has batch size {n}, {len(seeds)} seeds were given")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if (x_start is None) != (strength is None):
        raise ValueError("SDEdit needs both x_start and strength (or neither)")
    device = torch.device(device)
    if class_labels is not None:
        if class_labels.shape != (n,):
            raise ValueError(f"class_labels must have shape ({n},), got {tuple(class_labels.shape)}")
        class_labels = class_labels.to(device)
    if isinstance(guidance_scale, Tensor):
        if guidance_scale.shape != (n,):
            raise ValueError(
                f"a per-sample guidance_scale must have shape ({n},), got {tuple(guidance_scale.shape)}"
            )
        guidance_scale = guidance_scale.to(device=device, dtype=torch.float32)
        if bool((guidance_scale == 1).all()):
            guidance_scale = 1.0
    null_class = getattr(denoiser, "null_class", None)
    if guidance_interval is not None:
        lo, hi = (float(v) for v in guidance_interval)
        if not 0.0 <= lo < hi:
            raise ValueError(f"guidance_interval must be [lo, hi] with 0 <= lo < hi, got {list(guidance_interval)}")

    rng = StackedRandomGenerator(seeds, device)
    grid = sampling_grid(process, steps, strength, device, spacing or DEFAULT_SPACING.get(name, "time"))
    if x_start is None:
        x = process.prior_sample(shape, noise=rng.randn(shape))
    else:
        if tuple(x_start.shape) != shape:
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {shape}")
        x = process.q_sample(x_start.to(device, torch.float32), grid[0], rng.randn(shape))

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        t_batch = t.to(x_t.dtype).expand(n)
        scale = guidance_scale
        if guidance_interval is not None:
            alpha, sigma = process.alpha_sigma(t_batch[:1])
            if not lo < float(sigma / alpha) <= hi:  # one read per step, beside the network calls
                scale = 1.0
        x0 = guided_x0(denoiser, x_t, t_batch, class_labels, scale, null_class)
        return x0.clamp(-1.0, 1.0) if clip_x0 else x0

    if logger.isEnabledFor(logging.DEBUG):  # reading grid[0] back waits for the device
        logger.debug("sampling %s with %s on %d grid times from t=%.4g", shape, name, len(grid), float(grid[0]))
    with torch.no_grad():
        return fn(denoise, process, grid, x, rng, **options)
