"""Noise processes: marginals against the papers' closed forms, SDE coefficients, posteriors, grids."""

import math

import pytest
import torch

from diffaug.diffusion import PROCESSES, build_process, respaced_betas, space_timesteps
from tests.diffusion_helpers import single_thread  # noqa: F401

ALL = ["ddpm", "ncsn", "vp", "subvp", "ve"]


def closed_form_alpha_sigma(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha(t), sigma(t) written out from each paper with the default hyper-parameters."""
    t = t.double()
    if name == "ddpm":  # Ho et al.: linear betas 1e-4..0.02 over 1000 steps
        alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t.long()]
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if name == "ncsn":  # 232 geometric levels from 50 down to 0.01, t = L - 1 - paper index
        sigmas = torch.exp(torch.linspace(math.log(50), math.log(0.01), 232, dtype=torch.float64))
        return torch.ones_like(t), sigmas[231 - t.long()]
    if name == "ve":
        return torch.ones_like(t), 0.01 * (50 / 0.01) ** t
    log_alpha = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    alpha = log_alpha.exp()
    return alpha, (1 - alpha**2).sqrt() if name == "vp" else 1 - alpha**2


def some_times(process, n: int = 7) -> torch.Tensor:
    t = torch.linspace(process.t_min, process.t_max, n, dtype=torch.float64)
    return t.round() if process.discrete else t


def test_registry_names_and_errors():
    assert PROCESSES.names() == sorted(ALL)
    with pytest.raises(KeyError, match="valid names: ddpm, ncsn, subvp, ve, vp.*Did you mean 'ddpm'"):
        build_process("ddpn")
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'.*linear.*cosine"):
        build_process("ddpm", schedule="quadratic")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        build_process("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="t_min must be in"):
        build_process("vp", t_min=0.0)
    with pytest.raises(TypeError):
        build_process("vp", sigma_max=3.0)  # a VE argument on a VP process


@pytest.mark.parametrize("name", ALL)
def test_alpha_sigma_match_closed_forms(name):
    process = build_process(name)
    t = some_times(process)
    alpha, sigma = process.alpha_sigma(t)
    ref_alpha, ref_sigma = closed_form_alpha_sigma(name, t)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(process.log_snr(t), (ref_alpha / ref_sigma).log(), rtol=1e-9, atol=1e-9)
    assert alpha.dtype == torch.float64
    assert process.alpha_sigma(t.float())[0].dtype == torch.float32  # coefficients follow t's dtype


def test_ddpm_cosine_schedule_matches_nichol_dhariwal():
    process = build_process("ddpm", schedule="cosine")
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for step in (0, 10, 500, 900):  # before the 0.999 beta clipping near the end
        alpha, _ = process.alpha_sigma(torch.tensor(float(step), dtype=torch.float64))
        assert float(alpha**2) == pytest.approx(f(step + 1) / f(0), rel=1e-9)
    assert float(process.betas.max()) <= 0.999


@pytest.mark.parametrize("name", ALL)
def test_q_sample_has_the_marginal_moments(name):
    process = build_process(name)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([0.7, -0.4]).view(1, 2, 1, 1).expand(n, 2, 1, 1)
    for t_value in some_times(process, 5).tolist():
        t = torch.full((n,), t_value)
        x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        alpha, sigma = closed_form_alpha_sigma(name, torch.tensor(t_value))
        mean, var = x_t.double().mean(0).flatten(), x_t.double().var(0).flatten()
        assert (mean - alpha * x0[0].flatten()).abs().max() < 5 * sigma / math.sqrt(n) + 1e-6
        assert (var / sigma**2 - 1).abs().max() < 0.05


@pytest.mark.parametrize("name", ALL)
def test_sde_coefficients_generate_the_marginals(name):
    """f = d log(alpha)/dt and g^2 = d(sigma^2)/dt - 2 f sigma^2: then dx = f x dt + g dW has exactly the
    process's Gaussian marginals (checked by central differences of the closed forms)."""
    process = build_process(name)
    if process.discrete:  # DDPM's log(alpha_bar) is piecewise linear: differentiate inside a step
        t = torch.tensor([0.5, 10.5, 100.5, process.t_max - 0.5], dtype=torch.float64)
    else:
        t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6 * process.t_max
    f, g = process.sde(t)
    alpha_plus, sigma_plus = process.alpha_sigma(t + h)
    alpha_minus, sigma_minus = process.alpha_sigma(t - h)
    _, sigma = process.alpha_sigma(t)
    f_fd = (alpha_plus.log() - alpha_minus.log()) / (2 * h)
    g2_fd = (sigma_plus**2 - sigma_minus**2) / (2 * h) - 2 * f_fd * sigma**2
    torch.testing.assert_close(f, f_fd, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(g**2, g2_fd, rtol=1e-5, atol=1e-9)


def test_ddpm_sde_is_the_vp_limit_of_the_chain():
    process = build_process("ddpm")
    f, g = process.sde(torch.tensor([1.0, 500.0, 999.0], dtype=torch.float64))
    beta = process.betas[[1, 500, 999]]
    torch.testing.assert_close(g**2, -torch.log1p(-beta))  # ~ beta_i per unit of step-index time
    torch.testing.assert_close(f, -0.5 * g**2)


@pytest.mark.parametrize("name", ALL)
def test_reverse_sde_and_probability_flow(name):
    process = build_process(name)
    x, score = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    t = torch.full((4,), 0.5 * (process.t_min + process.t_max))
    f, g = (c.view(4, 1, 1, 1) for c in process.sde(t))
    drift, diffusion = process.reverse_sde(x, t, score)
    torch.testing.assert_close(drift, f * x - g**2 * score)
    torch.testing.assert_close(diffusion, g)
    drift, diffusion = process.reverse_sde(x, t, score, probability_flow=True)
    torch.testing.assert_close(drift, f * x - 0.5 * g**2 * score)
    assert float(diffusion.abs().max()) == 0


@pytest.mark.parametrize("name", ALL)
def test_probability_flow_ode_transports_a_gaussian(name):
    """Integrating the probability-flow ODE (Heun in process time, exact score of N(0, s^2)) from the prior
    maps N(0, prior_std^2) to a sample whose std matches the marginal at t_min."""
    process = build_process(name)
    s = 0.5
    x = process.prior_sample((4000, 1), generator=torch.Generator().manual_seed(1)).double()
    grid = process.timesteps(min(400, int(process.t_max) + 1) if process.discrete else 400)

    def velocity(x, t):
        alpha, sigma = process.alpha_sigma(t)
        score = -x / (alpha**2 * s**2 + sigma**2)
        return process.reverse_sde(x, t, score, probability_flow=True)[0]

    for t, t_next in zip(grid[:-1], grid[1:]):
        d = velocity(x, t)
        x_euler = x + (t_next - t) * d
        x = x + (t_next - t) * 0.5 * (d + velocity(x_euler, t_next))
    alpha, sigma = process.alpha_sigma(grid[-1])
    expected = math.sqrt(float(alpha**2 * s**2 + sigma**2))
    # starting from N(0, prior_std^2) instead of the exact marginal costs at most ~1e-4 relative
    assert float(x.std()) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name", ALL)
def test_posterior_is_consistent_with_the_marginals(name):
    """x_t ~ q(x_t | x0), then x_s ~ q(x_s | x_t, x0)  =>  x_s ~ q(x_s | x0) = N(alpha_s x0, sigma_s^2)."""
    process = build_process(name)
    gen = torch.Generator().manual_seed(2)
    n = 40000
    t, s = (torch.tensor(v, dtype=torch.float64) for v in (0.6 * process.t_max, 0.3 * process.t_max))
    if process.discrete:
        t, s = t.round(), s.round()
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    x_t = process.q_sample(x0, t, torch.randn(n, 1, generator=gen, dtype=torch.float64))
    mean, var = process.posterior(x0, x_t, t, s)
    x_s = mean + var.sqrt() * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    alpha_s, sigma_s = process.alpha_sigma(s)
    assert float(x_s.mean()) == pytest.approx(float(alpha_s * 0.8), abs=5 * float(sigma_s) / math.sqrt(n))
    assert float(x_s.var()) == pytest.approx(float(sigma_s**2), rel=0.04)
    torch.testing.assert_close(var, process.posterior_variance(t, s))


def test_ddpm_posterior_matches_ho_et_al_and_respacing():
    process = build_process("ddpm")
    x0, x_t = torch.randn(5, 1, 2, 2, dtype=torch.float64), torch.randn(5, 1, 2, 2, dtype=torch.float64)
    steps = torch.tensor([1.0, 2.0, 100.0, 500.0, 999.0], dtype=torch.float64)
    mean, var = process.q_posterior_mean_variance(x0, x_t, steps)
    mean_general, var_general = process.posterior(x0, x_t, steps, steps - 1)
    torch.testing.assert_close(mean, mean_general)
    torch.testing.assert_close(var, var_general)
    mean0, var0 = process.q_posterior_mean_variance(x0, x_t, torch.zeros(5))
    torch.testing.assert_close(mean0, x0)  # step 0 -> clean data, no noise
    assert float(var0.abs().max()) == 0

    # the respaced chain of improved-diffusion has the same posterior as the general two-time posterior
    timesteps = space_timesteps(1000, 10)
    assert timesteps[0] == 999 and timesteps[-1] == 0 and len(set(timesteps)) == 10
    betas = respaced_betas(process.alphas_cumprod, timesteps)  # increasing step order
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(alpha_bar, process.alphas_cumprod[sorted(timesteps)])
    ordered = sorted(timesteps)
    for k in range(1, len(ordered)):
        ho_var = betas[k] * (1 - alpha_bar[k - 1]) / (1 - alpha_bar[k])
        t, s = (torch.tensor(float(v), dtype=torch.float64) for v in (ordered[k], ordered[k - 1]))
        general = process.posterior_variance(t, s)
        assert float(general) == pytest.approx(float(ho_var), rel=1e-9)


def test_ncsn_levels():
    process = build_process("ncsn", sigma_min=0.01, sigma_max=50.0, num_scales=10)
    sigmas = process.sigmas
    assert float(sigmas[0]) == pytest.approx(50.0) and float(sigmas[-1]) == pytest.approx(0.01)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])))  # geometric


@pytest.mark.parametrize("name", ALL)
def test_noise_level_range_and_training_times(name):
    process = build_process(name)
    levels = process.noise_level(torch.tensor([process.t_min, process.t_max]))
    assert 0 <= float(levels[0]) <= 1 and 990 <= float(levels[1]) <= 1000
    t = process.sample_train_t(20000, generator=torch.Generator().manual_seed(3))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert float(t.min()) >= process.t_min and float(t.max()) <= process.t_max
    u = (t - process.t_min) / (process.t_max - process.t_min)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)  # uniform over the range
    if process.discrete:
        assert torch.equal(t, t.round())
        assert len(t.unique()) == int(process.t_max) + 1  # every step is drawn


def test_ddpm_noise_level_is_the_step_index():
    process = build_process("ddpm")
    t = torch.tensor([0.0, 17.0, 999.0])
    torch.testing.assert_close(process.noise_level(t), t)
    half = build_process("ddpm", num_timesteps=500)
    torch.testing.assert_close(half.noise_level(torch.tensor([250.0])), torch.tensor([500.0]))


@pytest.mark.parametrize("name", ALL)
def test_sampling_grids(name):
    process = build_process(name)
    for spacing in ("time", "logsnr", "karras"):
        grid = process.timesteps(20, spacing=spacing)
        assert grid.dtype == torch.float64 and bool((grid[1:] < grid[:-1]).all())
        assert float(grid[0]) == process.t_max and float(grid[-1]) == process.t_min
        if process.discrete:
            assert torch.equal(grid, grid.round())
    if not process.discrete:
        lam = process.log_snr(process.timesteps(20, spacing="logsnr"))
        torch.testing.assert_close(lam.diff(), torch.full_like(lam[1:], float(lam[1] - lam[0])))
        alpha, sigma = process.alpha_sigma(process.timesteps(20, spacing="karras", rho=7.0))
        root = (sigma / alpha) ** (1 / 7)
        torch.testing.assert_close(root.diff(), torch.full_like(root[1:], float(root[1] - root[0])))
    middle = process.t_min + 0.5 * (process.t_max - process.t_min)
    assert float(process.timesteps(11, t_start=middle)[0]) == pytest.approx(middle, abs=0.5)
    with pytest.raises(ValueError, match="positive integer"):
        process.timesteps(0)
    with pytest.raises(ValueError, match="unknown grid spacing 'cubic'"):
        process.timesteps(5, spacing="cubic")


def test_discrete_grids_never_exceed_the_chain():
    process = build_process("ncsn", num_scales=10)
    assert process.timesteps(10).tolist() == [float(i) for i in range(9, -1, -1)]
    with pytest.raises(ValueError, match="only 10 steps.*asked for 11"):
        process.timesteps(11)
    assert build_process("ddpm").timesteps(5).tolist() == [999.0, 749.0, 500.0, 250.0, 0.0]


@pytest.mark.parametrize("name", ALL)
def test_prior(name):
    process = build_process(name)
    _, sigma_max = closed_form_alpha_sigma(name, torch.tensor(process.t_max))
    assert process.prior_std == pytest.approx(float(sigma_max))
    z = process.prior_sample((3000, 1, 2, 2), generator=torch.Generator().manual_seed(4))
    assert float(z.std()) == pytest.approx(process.prior_std, rel=0.03)
    expected = torch.distributions.Normal(0.0, process.prior_std).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(process.prior_logp(z), expected)
    with pytest.raises(ValueError, match="noise has shape"):
        process.prior_sample((2, 3), noise=torch.zeros(3, 2))
