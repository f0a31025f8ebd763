import pytest
import torch

from diffaug.nets import NETS, DiT, UNet, build_net
from diffaug.nets.unet import AttentionBlock
from tests.nets_helpers import one_cpu_thread  # noqa: F401 (autouse fixture)

DIT_SIZES = ["s", "b", "l", "xl"]
DIT_PRESETS = [f"dit-{size}-{patch}" for size in DIT_SIZES for patch in (2, 4, 8)]
# Run for real on the CPU; the rest are traced on the meta device (shapes only, no memory).
SMALL_PRESETS = {"unet-tiny", "unet-small", "dit-tiny"}
# A wrapper of diffusers' UNet2DModel, not zero at initialisation; test_nets_diffusers_unet compares its
# outputs with diffusers' own.
WRAPPED = {"diffusers-unet2d"}


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def paper_dit(name: str) -> torch.nn.Module:
    # The paper's setting: 256x256 images through the SD VAE -> 4 x 32 x 32 latents, 1000 ImageNet classes.
    with torch.device("meta"):
        return build_net(name, in_channels=4, resolution=32, num_classes=1000, learn_sigma=True)


def test_registry_holds_every_preset():
    expected = {"unet", "unet-tiny", "unet-small", "unet-ddpm-cifar10", "unet-adm-cifar10", "dit-tiny", *DIT_PRESETS,
                *WRAPPED}
    assert set(NETS.names()) == expected


def test_unknown_preset_and_argument_errors_name_the_fix():
    with pytest.raises(KeyError, match="valid names:.*Did you mean 'dit-s-2'"):
        build_net("dit-s2")
    with pytest.raises(TypeError, match=r"no argument\(s\) \['channels'\].*in_channels"):
        build_net("unet-tiny", channels=1)


@pytest.mark.parametrize(("name", "published"), [("dit-s-2", 33.0e6), ("dit-b-2", 130.0e6),
                                                 ("dit-l-2", 458.0e6), ("dit-xl-2", 675.0e6)])
def test_dit_parameter_counts_match_paper(name, published):
    count = num_params(paper_dit(name))
    assert abs(count - published) / published < 0.01, count


@pytest.mark.parametrize("size", DIT_SIZES)
def test_dit_patch_size_barely_changes_parameter_count(size):
    # Only the patch embedding and the final linear depend on p; the paper reports one count per size.
    counts = [num_params(paper_dit(f"dit-{size}-{patch}")) for patch in (2, 4, 8)]
    assert counts[0] < counts[1] < counts[2] < counts[0] * 1.01


def test_ddpm_cifar10_unet_matches_published_size():
    with torch.device("meta"):
        net = build_net("unet-ddpm-cifar10")
    count = num_params(net)
    assert abs(count - 35.7e6) / 35.7e6 < 0.03, count
    # The DDPM reference implementation has exactly this many parameters.
    assert count == 35_746_307


@pytest.mark.parametrize("name", sorted(set(NETS.names()) - WRAPPED))
def test_every_preset_maps_images_to_same_shape(name):
    conditional = {"num_classes": 10}
    if name in SMALL_PRESETS:
        net = build_net(name, in_channels=1, resolution=16, **conditional)
        x = torch.randn(2, 1, 16, 16)
        out = net(x, torch.tensor([3.0, 700.0]), torch.tensor([2, 10]))
        assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero at initialisation
        return
    with torch.device("meta"):
        net = build_net(name, **conditional)
        x = torch.empty(2, 3, 32, 32)
        out = net(x, torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert isinstance(net, (UNet, DiT))
    assert out.shape == (2, 3, 32, 32)


def test_small_unet_preset_size_and_lowest_level_attention():
    net = build_net("unet-small", in_channels=1, resolution=28, num_classes=10)
    assert 1.5e6 < num_params(net) < 2.5e6
    attention_sizes = {m.norm.num_channels for m in net.modules() if isinstance(m, AttentionBlock)}
    assert attention_sizes == {64}  # the 7x7 level (and middle) only, wherever the resolution puts it
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([1.0, 2.0]), torch.tensor([0, 10])).shape == x.shape
