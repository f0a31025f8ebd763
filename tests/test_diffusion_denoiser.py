"""The Denoiser parameterisation layer and classifier-free guidance, with tiny real networks."""

import pytest
import torch
from torch import nn

from diffaug.diffusion import Denoiser, Preconditioning, Predictions, build_process, guided_x0
from tests.diffusion_helpers import (  # noqa: F401  (single_thread is an autouse fixture)
    MixtureOracle,
    TinyNet,
    single_thread,
    three_component_mixture,
)

ALL = ["ddpm", "ncsn", "vp", "subvp", "ve"]
PREDICTIONS = ["eps", "x0", "v", "score"]


def time_from_noise_level(process, noise_level: torch.Tensor) -> torch.Tensor:
    """Inverse of each process's documented noise_level convention."""
    if process.name == "ddpm":
        return noise_level * process.num_timesteps / 1000
    if process.name == "ncsn":
        return noise_level * process.t_max / 1000
    return noise_level / 1000


class PointMassNet(nn.Module):
    """The exact network for data that is a single point x_star, in any parameterisation: it recovers t from
    the noise level and x_t from the c_in-scaled input, then outputs the requested target."""

    def __init__(self, process, x_star: torch.Tensor, prediction: str):
        super().__init__()
        self.process, self.x_star, self.prediction = process, x_star, prediction

    def forward(self, x, noise_level, class_labels=None):
        t = time_from_noise_level(self.process, noise_level.double())
        alpha, sigma = (c.view(-1, 1, 1, 1) for c in self.process.alpha_sigma(t))
        x_t = x.double() * (alpha**2 + sigma**2).sqrt()  # undo c_in
        eps = (x_t - alpha * self.x_star) / sigma
        r = (alpha**2 + sigma**2).sqrt()
        target = {
            "eps": eps,
            "x0": self.x_star.expand_as(x_t),
            "v": (alpha * eps - sigma * self.x_star) / r,
            "score": -eps,  # sigma * score
        }[self.prediction]
        return target.to(x.dtype)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ALL)
def test_conversions_are_consistent(name, prediction):
    process = build_process(name)
    torch.manual_seed(0)
    net = TinyNet()
    denoiser = Denoiser(net, process, prediction=prediction)
    x_t = torch.randn(6, 2, 4, 4, dtype=torch.float64) * 3
    net.double()
    t = process.sample_train_t(6, generator=torch.Generator().manual_seed(1)).double()
    pred = denoiser.predict(x_t, t)
    alpha, sigma = (c.view(-1, 1, 1, 1) for c in process.alpha_sigma(t))
    raw = net(net.seen["x"], net.seen["noise_level"])
    native = {"eps": pred.eps, "x0": pred.x0, "v": pred.v, "score": sigma * pred.score}[prediction]
    torch.testing.assert_close(native, raw)  # the output is read as the chosen prediction
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x_t)  # x_t = alpha x0 + sigma eps
    torch.testing.assert_close(pred.score, -pred.eps / sigma)
    torch.testing.assert_close(pred.v, (alpha * pred.eps - sigma * pred.x0) / (alpha**2 + sigma**2).sqrt())
    torch.testing.assert_close(denoiser(x_t, t), pred.x0)
    torch.testing.assert_close(net.seen["noise_level"], process.noise_level(t))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ALL)
def test_exact_network_reconstructs_the_data(name, prediction):
    process = build_process(name)
    x_star = torch.tensor([0.5, -0.25], dtype=torch.float64).view(1, 2, 1, 1)
    denoiser = Denoiser(PointMassNet(process, x_star, prediction), process, prediction=prediction)
    t = process.timesteps(8).double()
    eps = torch.randn(8, 2, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_t = process.q_sample(x_star.expand(8, 2, 1, 1), t, eps)
    pred = denoiser.predict(x_t, t)
    # the tolerance absorbs the 1/alpha amplification of eps-type outputs at DDPM's last step
    torch.testing.assert_close(pred.x0, x_star.expand_as(x_t), rtol=0, atol=1e-6)
    torch.testing.assert_close(pred.eps, eps, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_network_input_has_unit_variance(name):
    """c_in = 1 / sqrt(alpha^2 + sigma^2): unit-variance data gives unit-variance network inputs at every
    noise level, even at VE's sigma = 50."""
    process = build_process(name)
    net = TinyNet(channels=1)
    denoiser = Denoiser(net, process)
    gen = torch.Generator().manual_seed(3)
    for t_value in (process.t_min, process.t_max):
        x0 = torch.randn(4000, 1, 2, 2, generator=gen)
        t = torch.full((4000,), t_value)
        denoiser.predict(process.q_sample(x0, t, torch.randn(x0.shape, generator=gen)), t)
        assert float(net.seen["x"].std()) == pytest.approx(1.0, abs=0.03)


def test_gradients_reach_the_network():
    process = build_process("vp")
    net = TinyNet(num_classes=3)
    denoiser = Denoiser(net, process, prediction="v", num_classes=3)
    x0 = denoiser(torch.randn(4, 2, 4, 4), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    x0.square().mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_class_labels():
    process = build_process("vp")
    net = TinyNet(num_classes=3)
    denoiser = Denoiser(net, process, num_classes=3)
    assert denoiser.null_class == 3
    x, t = torch.randn(2, 2, 4, 4), torch.rand(2)
    denoiser(x, t)
    assert net.seen["class_labels"].tolist() == [3, 3]  # no labels: the null class
    denoiser(x, t, torch.tensor([0, 2]))
    assert net.seen["class_labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\]"):
        denoiser(x, t, torch.tensor([0, 4]))
    with pytest.raises(TypeError, match=r"class_labels must be int64 \(or int32\), got torch.float32"):
        denoiser(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\)"):
        denoiser(x, t, torch.tensor([0, 1, 2]))

    unconditional_net = TinyNet()
    unconditional = Denoiser(unconditional_net, process)
    assert unconditional.null_class is None and not unconditional.conditional
    unconditional(x, t, torch.tensor([0, 1]))
    assert unconditional_net.seen["class_labels"] is None
    with pytest.raises(ValueError, match="unknown prediction 'noise'.*eps.*x0.*v.*score"):
        Denoiser(TinyNet(), process, prediction="noise")


def test_predictions_reject_unknown_kind():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="unknown prediction"):
        Predictions.from_output("epsilon", one, one, one, one)


class CountingOracle(MixtureOracle):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sizes = []

    def __call__(self, x_t, t, class_labels=None):
        self.batch_sizes.append(x_t.shape[0])
        return super().__call__(x_t, t, class_labels)


def test_classifier_free_guidance_combination():
    process = build_process("vp")
    oracle = CountingOracle(three_component_mixture(), process)
    x = torch.randn(4, 2, 1, 1)
    t = torch.full((4,), 0.5)
    labels = torch.tensor([0, 1, 2, 0])
    cond = oracle(x, t, labels)
    uncond = oracle(x, t, torch.full((4,), oracle.null_class))
    oracle.batch_sizes.clear()

    torch.testing.assert_close(guided_x0(oracle, x, t, labels, 1.0, oracle.null_class), cond)
    assert oracle.batch_sizes == [4]  # w = 1: the conditional pass only
    guided = guided_x0(oracle, x, t, labels, 3.0, oracle.null_class)
    assert oracle.batch_sizes[-1] == 8  # conditional and unconditional in one batched call
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    w = torch.tensor([1.0, 2.0, 0.0, 4.0])
    per_sample = guided_x0(oracle, x, t, labels, w, oracle.null_class)
    torch.testing.assert_close(per_sample, uncond + w.view(4, 1, 1, 1) * (cond - uncond))
    torch.testing.assert_close(per_sample[2], uncond[2])  # w = 0: unconditional
    with pytest.raises(ValueError, match="needs class_labels"):
        guided_x0(oracle, x, t, None, 2.0, oracle.null_class)


# ---------------------------------------------------------------- preconditioning


def reference_predict(denoiser: Denoiser, x_t, t, class_labels):
    """Denoiser.predict as written before its coefficients became a Preconditioning object."""
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    alpha, sigma = (c.view(-1, 1, 1, 1).to(dtype) for c in denoiser.process.alpha_sigma(t))
    c_in = (alpha**2 + sigma**2).rsqrt()
    output = denoiser.net((c_in * x_t).to(x_t.dtype), denoiser.process.noise_level(t).to(dtype), class_labels)
    output, x_t = output.to(dtype), x_t.to(dtype)
    r2 = alpha**2 + sigma**2
    if denoiser.prediction == "eps":
        eps = output
        x0 = (x_t - sigma * eps) / alpha
    elif denoiser.prediction == "x0":
        x0 = output
        eps = (x_t - alpha * x0) / sigma
    elif denoiser.prediction == "v":
        x0 = alpha / r2 * x_t - sigma / r2.sqrt() * output
        eps = sigma / r2 * x_t + alpha / r2.sqrt() * output
    else:
        eps = -output
        x0 = (x_t - sigma * eps) / alpha
    v = (alpha * eps - sigma * x0) / r2.sqrt()
    return x0, eps, v, -eps / sigma


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ALL)
def test_parameterisations_are_bit_identical_to_the_formulas_before(name, prediction):
    process = build_process(name)
    denoiser = Denoiser(TinyNet(num_classes=3), process, prediction=prediction, num_classes=3)
    g = torch.Generator().manual_seed(11)
    t = process.sample_train_t(6, generator=g)
    x_t = process.q_sample(torch.randn(6, 2, 4, 4, generator=g), t, torch.randn(6, 2, 4, 4, generator=g))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    got = denoiser.predict(x_t, t, labels)
    for new, old in zip((got.x0, got.eps, got.v, got.score), reference_predict(denoiser, x_t, t, labels)):
        assert torch.equal(new, old)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ["ddpm", "ve"])
def test_each_parameterisation_is_a_skip_and_output_scaling(name, prediction):
    """x0_hat = c_skip x_t + c_out F for the c_skip, c_out the Preconditioning states for it."""
    process = build_process(name)
    t = process.sample_train_t(5, generator=torch.Generator().manual_seed(3)).double()
    alpha, sigma = (c.view(-1, 1, 1, 1) for c in process.alpha_sigma(t))
    x_t, output = torch.randn(2, 5, 2, 3, 3, dtype=torch.float64)
    pre = Preconditioning.of(prediction, alpha, sigma, process.noise_level(t))
    expected = Predictions.from_output(prediction, output, x_t, alpha, sigma).x0
    assert torch.allclose(pre.denoised(output, x_t), expected, rtol=1e-9, atol=1e-9)
    assert torch.allclose(pre.c_in, (alpha**2 + sigma**2).rsqrt())


def test_edm_preconditioning_matches_the_paper_on_ve():
    """Karras et al. (2022), table 1, with alpha = 1: c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2); the Denoiser's x0_hat is
    c_skip x + c_out F(c_in x)."""
    process = build_process("ve")
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    _, s = process.alpha_sigma(t)
    sd = 0.5
    pre = Preconditioning.of("edm", torch.ones_like(s), s, process.noise_level(t))
    assert torch.allclose(pre.c_skip, sd**2 / (s**2 + sd**2))
    assert torch.allclose(pre.c_out, s * sd / (s**2 + sd**2).sqrt())
    assert torch.allclose(pre.c_in, 1 / (s**2 + sd**2).sqrt())

    net = TinyNet().double()
    denoiser = Denoiser(net, process, prediction="edm")
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    s4 = s.view(-1, 1, 1, 1)
    c_in = 1 / (s4**2 + sd**2).sqrt()
    expected = sd**2 / (s4**2 + sd**2) * x + s4 * sd / (s4**2 + sd**2).sqrt() * net(c_in * x, 1000 * t)
    assert torch.allclose(denoiser(x, t), expected, rtol=1e-12, atol=1e-12)
