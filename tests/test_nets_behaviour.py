"""Behaviour every denoiser network shares, checked on a tiny UNet and a tiny DiT."""

import pytest
import torch

from tests.nets_helpers import inputs, one_cpu_thread, perturb_, tiny_net  # noqa: F401 (autouse fixture)

KINDS = ["unet", "dit"]


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_exactly_zero_at_init(kind):
    net = tiny_net(kind, num_classes=5)
    x, level = inputs()
    out = net(x, level, torch.tensor([0, 1, 4, 5]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0
    # The input reaches the zero output layer, so the first gradient step moves the output.
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_class_labels_and_null_class_change_output(kind):
    net = perturb_(tiny_net(kind, num_classes=5)).eval()
    x, level = inputs(n=1)
    x, level = x.expand(3, -1, -1, -1), level.expand(3)
    out = net(x, level, torch.tensor([0, 1, 5]))  # class 0, class 1, null class
    assert out.shape == x.shape and torch.isfinite(out).all()
    scale = out.abs().mean()
    assert (out[0] - out[1]).abs().mean() > 1e-3 * scale
    assert (out[0] - out[2]).abs().mean() > 1e-3 * scale
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        net(x, level, torch.tensor([0, 1, 6]))


@pytest.mark.parametrize("kind", KINDS)
def test_noise_level_changes_output(kind):
    net = perturb_(tiny_net(kind)).eval()
    x, _ = inputs(n=1)
    x = x.expand(3, -1, -1, -1)
    out = net(x, torch.tensor([10.0, 500.0, -300.0]))
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()
    assert (out[0] - out[2]).abs().mean() > 1e-3 * out.abs().mean()


@pytest.mark.parametrize("kind", KINDS)
def test_unconditional_net_ignores_labels(kind):
    net = perturb_(tiny_net(kind)).eval()
    x, level = inputs()
    torch.testing.assert_close(net(x, level), net(x, level, torch.tensor([0, 1, 2, 3])))


@pytest.mark.parametrize("kind", KINDS)
def test_sdpa_and_math_attention_agree_inside_network(kind):
    sdpa = perturb_(tiny_net(kind, num_classes=3, attn_backend="sdpa")).eval()
    math = tiny_net(kind, num_classes=3, attn_backend="math").eval()
    math.load_state_dict(sdpa.state_dict())
    x, level = inputs()
    labels = torch.tensor([0, 1, 2, 3])
    out = sdpa(x, level, labels)
    assert out.abs().mean() > 1e-2  # a real signal, not two zeros agreeing
    torch.testing.assert_close(out, math(x, level, labels), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_same_gradients(kind):
    # Dropout on: non-reentrant checkpointing must replay the same dropout masks in the recomputation.
    extra = {"dropout": 0.2} if kind == "unet" else {}
    plain = perturb_(tiny_net(kind, num_classes=3, **extra)).train()
    checkpointed = tiny_net(kind, num_classes=3, grad_checkpointing=True, **extra).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, level = inputs()
    labels = torch.tensor([0, 1, 2, 3])
    losses = []
    for net in (plain, checkpointed):
        torch.manual_seed(123)
        loss = net(x, level, labels).square().mean()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_in_channels_1_to_4(kind, channels):
    net = perturb_(tiny_net(kind, in_channels=channels, num_classes=2))
    x, level = inputs(n=2, channels=channels)
    out = net(x, level, torch.tensor([0, 2]))
    assert out.shape == (2, channels, 8, 8)
    assert out.abs().mean() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_input_shape_names_the_fix(kind):
    net = tiny_net(kind)
    x, level = inputs(channels=1)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 3, 8, 8\).*in_channels and resolution"):
        net(x, level)
    x, level = inputs()
    with pytest.raises(ValueError, match="noise_level must have shape"):
        net(x, level[:2])
