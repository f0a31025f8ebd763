"""Training objectives: exact values for analytic data, weighting conversions, label dropout, buckets."""

import pytest
import torch

from diffaug.build import build_objective as build_objective_from_config
from diffaug.config import load_config
from diffaug.diffusion import (
    Denoiser,
    EDMObjective,
    Predictions,
    bucket_losses,
    build_objective,
    build_process,
    drop_labels,
)
from tests.diffusion_helpers import GaussianMixture, MixtureOracle, TinyNet, single_thread  # noqa: F401

ALL = ["ddpm", "ncsn", "vp", "subvp", "ve"]
WEIGHTINGS = ["simple", "sigma2", "likelihood", "min_snr", "truncated_snr"]
TARGETS = ["eps", "x0", "v"]


def single_gaussian(mean=(0.3, -0.2), std: float = 0.5) -> GaussianMixture:
    return GaussianMixture(
        means=torch.tensor([mean]), covs=(std**2 * torch.eye(2))[None], weights=torch.ones(1)
    )


def data(n: int, mixture: GaussianMixture, seed: int = 0) -> torch.Tensor:
    x0, _ = mixture.sample(n, torch.Generator().manual_seed(seed))
    return x0.view(n, 2, 1, 1)


@pytest.mark.parametrize("name", ALL)
def test_point_mass_oracle_has_zero_loss(name):
    """Data = one fixed point: the exact denoiser knows x0 and hence eps, so every loss vanishes."""
    process = build_process(name)
    point = GaussianMixture(torch.tensor([[0.4, -0.7]]), covs=torch.zeros(1, 2, 2), weights=torch.ones(1))
    x0 = data(256, point)
    for target in TARGETS:
        oracle = MixtureOracle(point, process, prediction=target)
        for weighting in WEIGHTINGS:
            objective = build_objective(process, weighting=weighting)
            loss, t = objective.loss(oracle, x0, generator=torch.Generator().manual_seed(1))
            assert loss.shape == (256,) and t.shape == (256,)
            assert float(loss.max()) < 1e-12, (target, weighting)


@pytest.mark.parametrize("name", ALL)
def test_gaussian_data_losses_reach_their_known_minimum(name):
    """Data N(m, s^2 I) and the exact denoiser: the loss is the posterior variance of the target, so with
    D = alpha^2 s^2 + sigma^2: E[eps-MSE | t] = alpha^2 s^2 / D (the DSM minimum),
    E[x0-MSE | t] = s^2 sigma^2 / D and E[v-MSE | t] = (alpha^2 + sigma^2) s^2 / D."""
    process = build_process(name)
    s2 = 0.25
    gaussian = single_gaussian(std=s2**0.5)
    x0 = data(20000, gaussian)
    for target in TARGETS:
        oracle = MixtureOracle(gaussian, process, prediction=target)
        objective = build_objective(process, weighting="simple")
        loss, t = objective.loss(oracle, x0, generator=torch.Generator().manual_seed(2))
        alpha, sigma = (c.double() for c in process.alpha_sigma(t))
        denominator = alpha**2 * s2 + sigma**2
        expected = {
            "eps": alpha**2 * s2 / denominator,
            "x0": s2 * sigma**2 / denominator,
            "v": (alpha**2 + sigma**2) * s2 / denominator,
        }[target]
        stderr = float((loss - expected).std()) / len(loss) ** 0.5
        assert abs(float(loss.mean() - expected.mean())) < 4 * stderr, target


@pytest.mark.parametrize("name", ALL)
def test_weightings_do_not_depend_on_the_target(name):
    """A weighting is a weight on the x0 error, so under the same draws an (imperfect) denoiser gets the same
    loss whether it regresses eps, x0 or v; "simple" is plain MSE on each target."""
    process = build_process(name)
    truth = single_gaussian()
    wrong = single_gaussian(mean=(0.0, 0.3), std=0.3)  # the oracle of a different distribution
    x0 = data(512, truth)
    losses = {}
    for weighting in WEIGHTINGS:
        for target in TARGETS:
            objective = build_objective(process, weighting=weighting, target=target)
            losses[weighting, target], t = objective.loss(
                MixtureOracle(wrong, process), x0, generator=torch.Generator().manual_seed(3)
            )
    alpha, sigma = (c.double() for c in process.alpha_sigma(t))
    snr = alpha**2 / sigma**2
    _, g = process.sde(t)
    for weighting in ("sigma2", "likelihood", "min_snr", "truncated_snr"):
        torch.testing.assert_close(losses[weighting, "x0"], losses[weighting, "eps"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(losses[weighting, "v"], losses[weighting, "eps"], rtol=1e-6, atol=1e-9)
    simple_x0 = losses["simple", "x0"]
    torch.testing.assert_close(losses["simple", "eps"], snr * simple_x0, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses["simple", "v"], (snr + 1) * simple_x0, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses["sigma2", "eps"], losses["simple", "eps"])  # DSM with sigma^2 = eps-MSE
    torch.testing.assert_close(losses["min_snr", "x0"], snr.clamp(max=5.0) * simple_x0, rtol=1e-6, atol=1e-9)
    close = dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses["truncated_snr", "x0"], snr.clamp(min=1.0) * simple_x0, **close)
    likelihood = g**2 / sigma**2 * losses["sigma2", "eps"]
    torch.testing.assert_close(losses["likelihood", "eps"], likelihood, **close)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("name", ALL)
def test_losses_train_a_real_network(name, prediction):
    process = build_process(name)
    denoiser = Denoiser(TinyNet(num_classes=2), process, prediction=prediction, num_classes=2)
    objective = build_objective(process)
    x0 = torch.randn(8, 2, 4, 4)
    loss, t = objective.loss(denoiser, x0, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert loss.shape == (8,) and t.shape == (8,) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is not None for p in denoiser.parameters())


def test_objective_defaults_and_errors():
    assert build_objective(build_process("ddpm")).weighting == "simple"
    for name in ("ncsn", "vp", "subvp", "ve"):
        assert build_objective(build_process(name)).weighting == "sigma2"
    with pytest.raises(ValueError, match="unknown loss weighting 'snr2'.*simple.*sigma2.*likelihood"):
        build_objective(build_process("vp"), weighting="snr2")
    with pytest.raises(ValueError, match="unknown loss target 'score'"):
        build_objective(build_process("vp"), target="score")
    with pytest.raises(ValueError, match="cannot infer the loss target"):
        build_objective(build_process("vp")).loss(lambda x, t, y: x, torch.zeros(2, 1, 1, 1))


def test_same_generator_same_loss():
    process = build_process("ve")
    oracle = MixtureOracle(single_gaussian(), process)
    objective = build_objective(process, target="x0")
    x0 = data(64, single_gaussian())
    a, ta = objective.loss(oracle, x0, generator=torch.Generator().manual_seed(5))
    b, tb = objective.loss(oracle, x0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_drop_labels():
    labels = torch.randint(0, 10, (100000,), generator=torch.Generator().manual_seed(6))
    dropped = drop_labels(labels, 0.3, null_class=10, generator=torch.Generator().manual_seed(7))
    is_null = dropped == 10
    assert float(is_null.float().mean()) == pytest.approx(0.3, abs=0.01)
    assert torch.equal(dropped[~is_null], labels[~is_null])  # the rest are untouched
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)
    assert bool((drop_labels(labels, 1.0, 10) == 10).all())
    again = drop_labels(labels, 0.3, null_class=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again, dropped)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        drop_labels(labels, 1.5, 10)


def test_bucket_losses():
    process = build_process("ddpm")
    t = torch.tensor([0.0, 100.0, 300.0, 600.0, 999.0, 998.0])
    loss = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    assert bucket_losses(loss, t, process) == {
        "t0.00-0.25": 2.0,
        "t0.25-0.50": 5.0,
        "t0.50-0.75": 7.0,
        "t0.75-1.00": 10.0,
    }
    vp = build_process("vp")
    assert bucket_losses(torch.tensor([2.0, 4.0]), torch.tensor([0.9, 0.95]), vp, num_buckets=2) == {
        "t0.50-1.00": 3.0
    }


# ---------------------------------------------------------------- options from the config, EDM


class ZeroX0:
    """Predicts x0_hat = 0 whatever x_t: the x0 error is -x0, so the loss is known without the noise draw."""

    prediction = "x0"

    def __init__(self, process):
        self.process = process

    def predict(self, x_t, t, class_labels=None):
        alpha, sigma = (c.view(-1, 1, 1, 1) for c in self.process.alpha_sigma(t))
        return Predictions.from_output("x0", torch.zeros_like(x_t), x_t, alpha, sigma)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_min_snr_gamma_from_the_config_reaches_the_loss(gamma):
    cfg = load_config([], ["objective.process=vp", "objective.weighting=min_snr",
                           f"objective.args={{min_snr_gamma: {gamma}, target: x0}}"])
    objective = build_objective_from_config(cfg)
    assert objective.min_snr_gamma == gamma and objective.target == "x0"
    process = objective.process
    x0 = torch.randn(512, 2, 3, 3, generator=torch.Generator().manual_seed(8))
    loss, t = objective.loss(ZeroX0(process), x0, generator=torch.Generator().manual_seed(9))
    alpha, sigma = process.alpha_sigma(t)
    # by hand: min(SNR, gamma) on the x0 error, which is -x0 here
    expected = torch.minimum(alpha**2 / sigma**2, torch.tensor(gamma)) * x0.pow(2).flatten(1).mean(1)
    assert torch.allclose(loss, expected, rtol=1e-6)
    assert bool((alpha**2 / sigma**2 > gamma).any())  # the clamp is active for some of the draws


def test_the_default_weighting_is_the_process_own():
    for name in ALL:
        process = build_process(name)
        assert build_objective(process).weighting == process.default_weighting
    with pytest.raises(TypeError, match="no option.*'gama'.*target, min_snr_gamma"):
        build_objective(build_process("vp"), gama=1.0)


def test_edm_weighting_is_the_paper_formula():
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on ||D - x0||^2 (Karras et al. 2022,
    table 1), converted to the eps and v errors by 1 / SNR and 1 / (SNR + 1)."""
    process = build_process("ve")
    objective = build_objective(process, weighting="edm", sigma_data=0.5)
    assert isinstance(objective, EDMObjective)
    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    _, s = process.alpha_sigma(t)
    lam = (s**2 + 0.25) / (s * 0.5) ** 2
    assert torch.allclose(objective.weight(t, "x0"), lam, rtol=1e-12)
    assert torch.allclose(objective.weight(t, "eps"), lam * s**2, rtol=1e-12)  # SNR = 1 / s^2 on VE
    assert torch.allclose(objective.weight(t, "v"), lam / (1 / s**2 + 1), rtol=1e-12)


def test_edm_draws_log_normal_noise_levels():
    process = build_process("ve")
    objective = build_objective(process, weighting="edm")
    t = objective.sample_t(40000, "cpu", torch.Generator().manual_seed(4))
    low, high = (float(torch.tensor(v, dtype=torch.float32)) for v in (process.t_min, process.t_max))
    assert t.dtype == torch.float32 and float(t.min()) >= low and float(t.max()) <= high
    log_sigma = process.alpha_sigma(t.double())[1].log()
    # the draws below sigma(t_min) ~ 0.01 (z < -2.8, 0.2% of them) are clamped to it, which moves the
    # mean and std by less than 0.01
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.03)
    cut = process.alpha_sigma(torch.tensor(low, dtype=torch.float64))[1].log()
    assert float((log_sigma <= cut + 1e-6).double().mean()) == pytest.approx(0.0023, abs=0.001)


def test_edm_trains_a_network_through_its_preconditioning():
    process = build_process("ve")
    denoiser = Denoiser(TinyNet(num_classes=2), process, prediction="edm", num_classes=2)
    objective = build_objective(process, weighting="edm")
    loss, t = objective.loss(denoiser, torch.randn(8, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert objective._target(denoiser) == "x0"
    assert loss.shape == (8,) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is not None for p in denoiser.parameters())
