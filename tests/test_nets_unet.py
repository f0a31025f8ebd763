import pytest
import torch

from diffaug.nets import UNet, build_net
from diffaug.nets.unet import AttentionBlock, Downsample, ResBlock, Upsample
from tests.nets_helpers import one_cpu_thread  # noqa: F401 (autouse fixture)


def small_unet(**overrides):
    kwargs = dict(resolution=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), norm_groups=8)
    return UNet(**{**kwargs, **overrides})


def test_resolution_not_divisible_by_downsampling_is_rejected():
    with pytest.raises(ValueError, match=r"resolution 28 is not divisible by 2\*\*3 = 8.*multiple of 8"):
        build_net("unet-ddpm-cifar10", resolution=28)
    # Three levels halve twice: 28 -> 14 -> 7 works.
    net = small_unet(resolution=28, channel_mult=(1, 2, 2), attention_resolutions=(7,))
    assert net(torch.zeros(1, 3, 28, 28), torch.zeros(1)).shape == (1, 3, 28, 28)


def test_attention_resolution_must_be_a_level():
    with pytest.raises(ValueError, match=r"attention_resolutions \[4\] are not levels.*valid: \[16, 8\]"):
        small_unet(attention_resolutions=(4,))


def test_norm_groups_must_divide_model_channels():
    with pytest.raises(ValueError, match="norm_groups=32 must divide model_channels=16"):
        small_unet(norm_groups=32)


def test_head_channels_sets_heads_per_width():
    net = small_unet(channel_mult=(1, 2), attention_resolutions=(16, 8), head_channels=8)
    blocks = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    heads = sorted({(b.attn.num_heads, b.norm.num_channels) for b in blocks})
    assert heads == [(2, 16), (4, 32)]
    with pytest.raises(ValueError, match="head_channels=12 must divide"):
        small_unet(head_channels=12)


def test_structure_follows_ddpm_layout():
    net = small_unet(channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,))
    modules = list(net.modules())
    # Encoder 3 levels x 2 blocks, decoder 3 x 3, middle 2.
    assert sum(isinstance(m, ResBlock) for m in modules) == 6 + 9 + 2
    assert sum(isinstance(m, Downsample) for m in modules) == 2
    assert sum(isinstance(m, Upsample) for m in modules) == 2
    # Attention at the 8x8 level: 2 encoder + 3 decoder blocks, plus the middle.
    assert sum(isinstance(m, AttentionBlock) for m in modules) == 6


def test_every_residual_block_and_attention_starts_as_identity():
    net = small_unet(num_classes=3)
    for module in net.modules():
        if isinstance(module, ResBlock):
            assert torch.count_nonzero(module.conv2.weight) == 0
        if isinstance(module, AttentionBlock):
            assert torch.count_nonzero(module.attn.proj.weight) == 0
    h = torch.randn(2, 32, 8, 8)  # the 8x8 level has 32 channels
    attention = next(m for m in net.modules() if isinstance(m, AttentionBlock))
    assert torch.equal(attention(h), h)
    res = net.middle[0]
    assert torch.equal(res(h, torch.randn(2, 64)), h)


def test_ddpm_additive_embedding_variant_runs():
    net = small_unet(use_scale_shift_norm=False, dropout=0.1)
    assert net.down_blocks[1][0].embed_proj.out_features == 16  # one bias per channel, not scale + shift
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor([1.0, 2.0])).shape == x.shape


def test_bad_dropout_is_rejected():
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        small_unet(dropout=1.0)


def test_channels_last_computes_the_same_function_in_the_usual_layout():
    torch.manual_seed(0)
    plain = small_unet()
    for p in plain.parameters():  # away from the zero initialisation, so every layer matters
        torch.nn.init.normal_(p, std=0.1)
    fast = small_unet(channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert fast.down_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, level = torch.randn(4, 3, 16, 16), torch.rand(4) * 1000
    out = fast(x, level)
    assert out.is_contiguous()
    torch.testing.assert_close(out, plain(x, level), rtol=1e-4, atol=1e-4)
    # Weights keep their layout through loading and come back in it from the state dict.
    again = small_unet(channels_last=True)
    again.load_state_dict(fast.state_dict())
    torch.testing.assert_close(again(x, level), out, rtol=0, atol=0)
