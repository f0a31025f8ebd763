"""Samplers against the exact denoiser of a Gaussian mixture, for every process.

Four kinds of evidence: (1) every sampler on every process reproduces the mixture (weights, means,
covariances); (2) on the processes the papers wrote them for, the samplers reproduce the papers'
algorithms draw for draw; (3) the deterministic solvers converge to one shared probability-flow solution at
their theoretical order; (4) guidance, per-sample seeds and SDEdit behave as specified.
"""

import math

import pytest
import torch

from diffaug.diffusion import (
    SAMPLERS,
    StackedRandomGenerator,
    build_process,
    respaced_betas,
    sample,
    space_timesteps,
)
from tests.diffusion_helpers import (  # noqa: F401  (single_thread is an autouse fixture)
    MixtureOracle,
    fit_mixture,
    single_thread,
    three_component_mixture,
)

ALL = ["ddpm", "ncsn", "vp", "subvp", "ve"]
MIXTURE = three_component_mixture()
N = 4000
SHAPE = (2, 1, 1)  # a 2-d point as a 2-channel 1x1 image, so it goes through image-shaped code

# Moderate settings, and tolerances on fit_mixture's (weights, means in component stds, relative covariance
# error). Sampling noise alone at N = 4000 reaches about (0.015, 0.13, 0.08); with the discretisation error
# of the correct samplers the worst case over the five processes stays below 75% of each bound (also for
# other seeds), while a 10% error in the ancestral noise std or an off-by-one grid time exceeds it.
MODERATE = {
    "ddpm": dict(steps=200),
    "ddim": dict(steps=200),
    "euler_maruyama": dict(steps=200),
    "pc": dict(steps=150),
    "langevin": dict(steps=200, n_steps_each=3, snr=0.5),
    "pf_ode_heun": dict(steps=40),
    "dpmpp_2m": dict(steps=40),
}
TOLERANCE = (0.03, 0.25, 0.2)
# Annealed Langevin gets the mixture weights only to about 0.025. Its step shrinks with sigma^2, so on sub-VP,
# whose means still move by 5% when sigma is only 0.1, the means lag by 0.3-0.5 std.
LANGEVIN_TOLERANCE = (0.04, 0.3, 0.25)
LANGEVIN_SUBVP_TOLERANCE = (0.04, 0.8, 0.25)


def draw(name, process, n=N, seed0=0, oracle=None, **kwargs):
    oracle = oracle or MixtureOracle(MIXTURE, process)
    return sample(name, oracle, process, shape=(n, *SHAPE), seeds=list(range(seed0, seed0 + n)), **kwargs)


def assert_fits(samples, tolerance, weights=None):
    fit = fit_mixture(samples, MIXTURE, weights)
    max_weight, max_mean, max_cov = tolerance
    assert fit.weight_error < max_weight and fit.mean_error < max_mean and fit.cov_error < max_cov, str(fit)


def test_registry():
    assert SAMPLERS.names() == sorted(MODERATE)


# ------------------------------------------------------------------ (1) every sampler on every process


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("sampler", sorted(MODERATE))
def test_sampler_reproduces_the_mixture(sampler, name):
    process = build_process(name)
    samples = draw(sampler, process, **MODERATE[sampler])
    assert samples.shape == (N, *SHAPE) and samples.dtype == torch.float32
    if sampler == "langevin":
        assert_fits(samples, LANGEVIN_SUBVP_TOLERANCE if name == "subvp" else LANGEVIN_TOLERANCE)
    else:
        assert_fits(samples, TOLERANCE)


@pytest.mark.parametrize("name", ALL)
def test_stochastic_variants(name):
    process = build_process(name)
    assert_fits(draw("ddim", process, steps=100, eta=0.5), TOLERANCE)
    assert_fits(draw("pc", process, steps=100, predictor="euler"), TOLERANCE)
    assert_fits(draw("pc", process, steps=100, corrector_steps=2, snr=0.1), TOLERANCE)


@pytest.mark.parametrize("name", ALL)
def test_few_step_solvers(name):
    """DPM-Solver++(2M) and Heun at 10-20 steps; DDIM, first order, needs more steps for the same accuracy."""
    process = build_process(name)
    assert_fits(draw("dpmpp_2m", process, steps=20), (0.03, 0.4, 0.35))
    assert_fits(draw("pf_ode_heun", process, steps=20), (0.03, 0.25, 0.2))  # 39 evaluations
    assert_fits(draw("dpmpp_2m", process, steps=10), (0.03, 1.5, 1.2))
    ddim20 = fit_mixture(draw("ddim", process, steps=20), MIXTURE)
    assert ddim20.weight_error < 0.03 and ddim20.mean_error < 1.0 and ddim20.cov_error < 0.3, str(ddim20)
    dpmpp20 = fit_mixture(draw("dpmpp_2m", process, steps=20), MIXTURE)
    assert dpmpp20.mean_error < ddim20.mean_error  # second order beats first order at equal cost


def test_ddim_with_eta_one_is_ancestral_sampling():
    process = build_process("ddpm")
    ddpm = draw("ddpm", process, n=64, steps=50)
    torch.testing.assert_close(draw("ddim", process, n=64, steps=50, eta=1.0), ddpm, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ (2) the papers' algorithms, draw for draw


def reference_setup(process, n, seeds0=100):
    """The oracle, the noise stream a sampler sees (prior first, then one draw per stochastic step)."""
    seeds = list(range(seeds0, seeds0 + n))
    rng = StackedRandomGenerator(seeds)
    return MixtureOracle(MIXTURE, process), seeds, rng, process.prior_std * rng.randn((n, *SHAPE))


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_matches_ho_et_al_algorithm_2_on_the_respaced_chain(steps):
    process = build_process("ddpm")
    oracle, seeds, rng, x = reference_setup(process, 16)
    timesteps = sorted(space_timesteps(1000, steps))
    alpha_bar = torch.cumprod(1 - respaced_betas(process.alphas_cumprod, timesteps), 0)  # (steps,)
    for k in range(steps - 1, -1, -1):  # Algorithm 2 on the chain of the kept steps
        t = torch.full((16,), float(timesteps[k]))
        ab, ab_prev = alpha_bar[k], alpha_bar[k - 1] if k > 0 else torch.tensor(1.0, dtype=torch.float64)
        alpha = ab / ab_prev
        eps = (x - ab.sqrt() * oracle(x, t)) / (1 - ab).sqrt()
        x = (x - (1 - alpha) / (1 - ab).sqrt() * eps) / alpha.sqrt()
        if k > 0:
            x = x + ((1 - ab_prev) / (1 - ab) * (1 - alpha)).sqrt() * rng.randn(x.shape)
    ours = sample("ddpm", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=steps)
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_song_et_al_equation_12(eta):
    process = build_process("ddpm")
    oracle, seeds, rng, x = reference_setup(process, 16)
    tau = space_timesteps(1000, 25)  # decreasing
    for i, step in enumerate(tau):
        ab = process.alphas_cumprod[step]
        x0 = oracle(x, torch.full((16,), float(step)))
        if i == len(tau) - 1:
            break
        ab_prev = process.alphas_cumprod[tau[i + 1]]
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps
        if eta > 0:
            x = x + sigma * rng.randn(x.shape)
    ours = sample("ddim", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=25, eta=eta)
    torch.testing.assert_close(ours, x0.float(), rtol=1e-4, atol=1e-4)


def test_langevin_matches_song_and_ermon_algorithm_1():
    """Annealed Langevin dynamics with alpha_i = eps sigma_i^2 / sigma_L^2 and T steps per level, followed by
    NCSNv2's denoising step x + sigma_L^2 s(x, sigma_L)."""
    process = build_process("ncsn", sigma_min=0.01, sigma_max=5.0, num_scales=10)
    oracle, seeds, rng, x = reference_setup(process, 16)
    step_lr, n_steps_each = 2e-5, 4
    sigmas = process.sigmas  # largest first
    for i, sigma in enumerate(sigmas):
        t = torch.full((16,), float(len(sigmas) - 1 - i))
        alpha_i = step_lr * sigma**2 / sigmas[-1] ** 2
        for _ in range(n_steps_each):
            score = (oracle(x, t) - x) / sigma**2
            x = x + alpha_i / 2 * score + alpha_i.sqrt() * rng.randn(x.shape)
    x = x + sigmas[-1] ** 2 * (oracle(x, torch.zeros(16)) - x) / sigmas[-1] ** 2
    ours = sample("langevin", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=10,
                  n_steps_each=n_steps_each, snr=math.sqrt(step_lr) / (2 * 0.01))
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


def test_reverse_diffusion_predictor_matches_score_sde_on_ve():
    process = build_process("ve")
    oracle, seeds, rng, x = reference_setup(process, 16)
    grid = torch.linspace(1.0, 1e-5, 30, dtype=torch.float64)
    sigma = 0.01 * 5000.0**grid
    for i in range(29):
        score = (oracle(x, grid[i].expand(16)) - x) / sigma[i] ** 2
        var = sigma[i] ** 2 - sigma[i + 1] ** 2
        x = x + var * score + var.sqrt() * rng.randn(x.shape)
    x = oracle(x, grid[-1].expand(16))
    ours = sample("pc", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=30, corrector_steps=0)
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


def test_euler_maruyama_matches_the_vp_reverse_sde():
    process = build_process("vp")
    oracle, seeds, rng, x = reference_setup(process, 16)
    grid = torch.linspace(1.0, 1e-3, 40, dtype=torch.float64)
    for i in range(39):
        t, dt = grid[i], grid[i] - grid[i + 1]
        beta = 0.1 + t * 19.9
        alpha = torch.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
        score = (alpha * oracle(x, t.expand(16)) - x) / (1 - alpha**2)
        x = x + (0.5 * beta * x + beta * score) * dt + (beta * dt).sqrt() * rng.randn(x.shape)
    x = oracle(x, grid[-1].expand(16))
    ours = sample("euler_maruyama", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=40)
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


def test_heun_matches_karras_et_al_algorithm_1_on_ve():
    process = build_process("ve")
    oracle, seeds, _, x = reference_setup(process, 16)
    grid = torch.linspace(1.0, 1e-5, 12, dtype=torch.float64)
    sigma = 0.01 * 5000.0**grid
    for i in range(11):
        d = (x - oracle(x, grid[i].expand(16))) / sigma[i]
        x_next = x + (sigma[i + 1] - sigma[i]) * d
        d_next = (x_next - oracle(x_next, grid[i + 1].expand(16))) / sigma[i + 1]
        x = x + (sigma[i + 1] - sigma[i]) * 0.5 * (d + d_next)
    x = oracle(x, grid[-1].expand(16))
    ours = sample("pf_ode_heun", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=12)
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_matches_lu_et_al_algorithm_2_on_vp():
    """DPM-Solver++(2M) on VP with evenly spaced times, whose lambda steps are uneven (r != 1)."""
    process = build_process("vp")
    oracle, seeds, _, x = reference_setup(process, 16)
    grid = torch.linspace(1.0, 1e-3, 12, dtype=torch.float64)
    alpha = torch.exp(-0.25 * grid**2 * 19.9 - 0.05 * grid)
    sigma = (1 - alpha**2).sqrt()
    lam = (alpha / sigma).log()
    x0 = [oracle(x, grid[0].expand(16))]
    x = sigma[1] / sigma[0] * x - alpha[1] * torch.expm1(-(lam[1] - lam[0])) * x0[0]
    for i in range(2, 12):
        x0.append(oracle(x, grid[i - 1].expand(16)))
        h, h_prev = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0[-1] - 1 / (2 * r) * x0[-2]
        x = sigma[i] / sigma[i - 1] * x - alpha[i] * torch.expm1(-h) * d
    x = oracle(x, grid[-1].expand(16))
    ours = sample("dpmpp_2m", oracle, process, shape=(16, *SHAPE), seeds=seeds, steps=12, spacing="time")
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ (3) convergence of the ODE solvers


def convergence_orders(name, process, steps, reference, **kwargs):
    """log2(error(n) / error(2 n)) for n in steps. The error is the median over samples: the few samples near
    a boundary between components, which a coarse step can send to the other side, would dominate a mean."""
    errors = []
    for n in steps:
        distance = (draw(name, process, n=256, steps=n, **kwargs) - reference).flatten(1).norm(dim=1)
        errors.append(float(distance.median()))
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])], errors


@pytest.mark.parametrize("name", ALL)
def test_ode_solvers_converge_to_one_solution_at_their_order(name):
    """DDIM (eta = 0), Heun and DPM-Solver++(2M) integrate the same probability-flow ODE from the same
    noise, so per sample they converge to one solution: DDIM with order 1, the others with order 2."""
    process = build_process(name)
    fine = 232 if name == "ncsn" else 500
    reference = draw("pf_ode_heun", process, n=256, steps=fine)
    other = draw("dpmpp_2m", process, n=256, steps=fine)
    assert float((reference - other).flatten(1).norm(dim=1).mean()) < 1e-3

    orders, errors = convergence_orders("ddim", process, (10, 20, 40), reference)
    assert all(0.8 < o < 1.3 for o in orders), (orders, errors)
    orders, errors = convergence_orders("pf_ode_heun", process, (10, 20, 40), reference)
    assert all(o > 1.75 for o in orders), (orders, errors)
    for spacing in ("logsnr", "karras"):  # karras' uneven lambda steps exercise the multistep ratio r
        orders, errors = convergence_orders("dpmpp_2m", process, (10, 20, 40), reference, spacing=spacing)
        assert all(o > 1.75 for o in orders), (spacing, orders, errors)


# ------------------------------------------------------------------ (4) guidance, seeds, SDEdit, errors


def test_guidance_scale_one_gives_each_class_distribution():
    process = build_process("vp")
    labels = torch.arange(N) % 3
    samples = draw("dpmpp_2m", process, steps=40, class_labels=labels)
    # nearest-mean assignment misplaces 7e-5 of the mixture's own samples (far tails)
    assert float((MIXTURE.assign(samples.view(N, 2)) == labels).float().mean()) > 0.999
    for k in range(3):
        one_hot = torch.nn.functional.one_hot(torch.tensor(k), 3).double()
        assert_fits(samples[labels == k], TOLERANCE, weights=one_hot)


def test_per_sample_guidance_scale_equals_separate_runs():
    process = build_process("ve")
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scale = torch.tensor([1.0, 3.0, 1.0, 3.0, 0.0, 1.0])
    mixed = draw("euler_maruyama", process, n=6, steps=30, class_labels=labels, guidance_scale=scale)
    for w in (0.0, 1.0, 3.0):
        separate = draw("euler_maruyama", process, n=6, steps=30, class_labels=labels, guidance_scale=w)
        torch.testing.assert_close(mixed[scale == w], separate[scale == w], rtol=1e-5, atol=1e-5)


def test_guidance_pushes_samples_away_from_the_other_classes():
    process = build_process("vp")
    n = 1500
    labels = torch.arange(n) % 3

    def distance_to_other_classes(samples):
        d = torch.cdist(samples.view(n, 2).double(), MIXTURE.means)  # (n, 3)
        own = torch.nn.functional.one_hot(labels, 3).bool()
        return float(d.masked_fill(own, math.inf).min(1).values.mean())

    plain = draw("dpmpp_2m", process, n=n, steps=40, class_labels=labels, guidance_scale=1.0)
    guided = draw("dpmpp_2m", process, n=n, steps=40, class_labels=labels, guidance_scale=3.0)
    assert distance_to_other_classes(guided) > distance_to_other_classes(plain) + 0.2
    assert float((MIXTURE.assign(guided.view(n, 2)) == labels).float().mean()) > 0.999


def test_guidance_interval_guides_only_inside_its_noise_levels():
    process = build_process("vp")
    labels = torch.arange(30) % 3
    common = dict(n=30, steps=20, class_labels=labels)
    plain = draw("ddim", process, guidance_scale=1.0, **common)
    guided = draw("ddim", process, guidance_scale=3.0, **common)
    torch.testing.assert_close(draw("ddim", process, guidance_scale=3.0, guidance_interval=(1e6, 1e7), **common), plain)
    torch.testing.assert_close(draw("ddim", process, guidance_scale=3.0, guidance_interval=(0.0, 1e9), **common), guided)
    middle = draw("ddim", process, guidance_scale=3.0, guidance_interval=(0.3, 3.0), **common)
    assert (middle - plain).abs().max() > 1e-3 and (middle - guided).abs().max() > 1e-3
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        draw("ddim", process, guidance_scale=3.0, guidance_interval=(2.0, 1.0), **common)


@pytest.mark.parametrize("sampler", sorted(MODERATE))
def test_same_seed_same_image_whatever_the_batch(sampler):
    options = {"n_steps_each": 2} if sampler == "langevin" else {"eta": 0.7} if sampler == "ddim" else {}
    seeds = [5, 11, 12, 13, 99, 1234567, 2**40]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])  # 3 = the null class
    scale = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 3.0, 1.0])
    for name in ALL:
        process = build_process(name)
        oracle = MixtureOracle(MIXTURE, process)
        common = dict(steps=6, device="cpu", **options)
        batch = sample(sampler, oracle, process, shape=(7, *SHAPE), seeds=seeds, class_labels=labels,
                       guidance_scale=scale, **common)
        for i, seed in enumerate(seeds):
            single = sample(sampler, oracle, process, shape=(1, *SHAPE), seeds=[seed],
                            class_labels=labels[i : i + 1], guidance_scale=scale[i : i + 1], **common)
            torch.testing.assert_close(single[0], batch[i], rtol=1e-5, atol=1e-5)
        again = sample(sampler, oracle, process, shape=(7, *SHAPE), seeds=seeds, class_labels=labels,
                       guidance_scale=scale, **common)
        assert torch.equal(again, batch)
        other_seeds = sample(sampler, oracle, process, shape=(7, *SHAPE), seeds=[s + 1 for s in seeds],
                             class_labels=labels, guidance_scale=scale, **common)
        assert not torch.allclose(other_seeds, batch)


class FirstCall:
    """Wraps an oracle and records the first (x_t, t) it is asked about."""

    def __init__(self, oracle):
        self.oracle, self.null_class, self.first = oracle, oracle.null_class, None

    def __call__(self, x_t, t, class_labels=None):
        if self.first is None:
            self.first = (x_t.clone(), t.clone())
        return self.oracle(x_t, t, class_labels)


@pytest.mark.parametrize("name", ALL)
def test_sdedit_strength_sets_the_starting_noise_level(name):
    process = build_process(name)
    x_start = MIXTURE.sample(4000, torch.Generator().manual_seed(7))[0].float().view(4000, *SHAPE)
    for strength in (0.3, 1.0):
        recorder = FirstCall(MixtureOracle(MIXTURE, process))
        sample("ddpm", recorder, process, shape=x_start.shape, seeds=list(range(4000)), steps=20,
               x_start=x_start, strength=strength)
        x_t, t = recorder.first
        expected_t = process.t_min + strength * (process.t_max - process.t_min)
        assert float(t[0]) == pytest.approx(expected_t, abs=0.5 if process.discrete else 1e-6)
        alpha, sigma = process.alpha_sigma(t[0].double())
        eps = (x_t.double() - alpha * x_start.double()) / sigma
        assert abs(float(eps.mean())) < 0.03 and float(eps.std()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("name", ALL)
def test_sdedit_small_strength_stays_close_and_large_strength_forgets(name):
    process = build_process(name)
    n = 2000
    x_start, components = MIXTURE.sample(n, torch.Generator().manual_seed(8))
    x_start = x_start.float().view(n, *SHAPE)

    def edit(strength):
        return draw("ddpm", process, n=n, steps=100, x_start=x_start, strength=strength)

    near = (edit(0.05) - x_start).flatten(1).norm(dim=1).mean()
    assert float(near) < 0.25  # the component stds are 0.18-0.4
    kept = MIXTURE.assign(edit(0.1).view(n, 2)) == components
    assert float(kept.float().mean()) > 0.97  # samples started in a component stay in it
    far = edit(1.0)
    assert float((far - x_start).flatten(1).norm(dim=1).mean()) > 1.5
    assert_fits(far, (0.04, 0.3, 0.25))  # strength 1: the whole mixture again


@pytest.mark.parametrize("sampler", sorted(MODERATE))
def test_sdedit_runs_with_every_sampler(sampler):
    process = build_process("vp")
    n = 500
    x_start = MIXTURE.means[0].float().view(1, *SHAPE).expand(n, *SHAPE)
    options = {"n_steps_each": 2} if sampler == "langevin" else {}
    edited = draw(sampler, process, n=n, steps=40, x_start=x_start, strength=0.1, **options)
    assert float((MIXTURE.assign(edited.view(n, 2)) == 0).float().mean()) > 0.95


def test_bad_arguments():
    process = build_process("vp")
    oracle = MixtureOracle(MIXTURE, process)
    args = dict(shape=(2, *SHAPE), seeds=[0, 1], steps=3)
    with pytest.raises(KeyError, match="unknown sampler 'dpm'.*valid names: ddim, ddpm, dpmpp_2m"):
        sample("dpm", oracle, process, **args)
    with pytest.raises(TypeError, match="sampler 'ddpm' has no option.*'eta'.*none"):
        sample("ddpm", oracle, process, eta=0.5, **args)
    with pytest.raises(TypeError, match="'snr'.*options are: eta"):
        sample("ddim", oracle, process, snr=0.5, **args)
    with pytest.raises(ValueError, match="one seed per sample"):
        sample("ddpm", oracle, process, shape=(3, *SHAPE), seeds=[0, 1], steps=3)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sample("ddpm", oracle, process, shape=(2, *SHAPE), seeds=[0, 1], steps=0)
    with pytest.raises(ValueError, match="both x_start and strength"):
        sample("ddpm", oracle, process, strength=0.5, **args)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        sample("ddpm", oracle, process, x_start=torch.zeros(2, *SHAPE), strength=1.5, **args)
    with pytest.raises(ValueError, match="needs class_labels"):
        sample("ddpm", oracle, process, guidance_scale=2.0, **args)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        sample("ddim", oracle, process, eta=2.0, **args)
    with pytest.raises(ValueError, match="predictor must be one of reverse_diffusion, euler, got 'heun'"):
        sample("pc", oracle, process, predictor="heun", **args)
    for name, options in (("langevin", {"n_steps_each": 0}), ("pc", {"snr": 0.0}),
                          ("pc", {"corrector_steps": -1})):
        with pytest.raises(ValueError, match=f"{next(iter(options))} must be"):
            sample(name, oracle, process, **options, **args)
    with pytest.raises(ValueError, match=r"guidance_scale must have shape \(2,\)"):
        sample("ddpm", oracle, process, class_labels=torch.tensor([0, 1]), guidance_scale=torch.ones(3),
               **args)
    with pytest.raises(TypeError, match="seeds must be Python ints"):
        sample("ddpm", oracle, process, shape=(2, *SHAPE), seeds=[0.5, 1], steps=3)


@pytest.mark.parametrize("sampler", sorted(MODERATE))
def test_clip_x0_keeps_every_prediction_in_the_image_range(sampler):
    """A denoiser that overshoots the data range (x0_hat = 3 everywhere): clipped sampling ends at the range's
    edge, unclipped sampling follows the prediction."""
    process = build_process("ddpm")

    def overshooting(x_t, t, class_labels=None):
        return torch.full_like(x_t, 3.0)

    clipped = sample(sampler, overshooting, process, shape=(4, 1, 2, 2), seeds=[0, 1, 2, 3], steps=5, clip_x0=True)
    plain = sample(sampler, overshooting, process, shape=(4, 1, 2, 2), seeds=[0, 1, 2, 3], steps=5)
    assert torch.equal(clipped, torch.ones_like(clipped))
    assert torch.equal(plain, torch.full_like(plain, 3.0))
