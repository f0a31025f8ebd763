"""UNet and DiT satisfy the DenoiserNet contract that the Denoiser, the builder and fine-tuning rely on."""

import re

import pytest
import torch
from torch import nn

from diffaug.nets import NETS, DenoiserNet, DiT, MultiHeadSelfAttention, UNet, build_net
from tests.diffusion_helpers import TinyNet


def adapted(net: nn.Module) -> set[str]:
    return {name for name, m in net.named_modules()
            if isinstance(m, nn.Linear) and any(re.search(p, name) for p in net.lora_targets)}


@pytest.mark.parametrize("preset, cls", [("unet-tiny", UNet), ("dit-tiny", DiT)])
def test_presets_satisfy_the_protocol(preset, cls):
    net = build_net(preset, in_channels=3, resolution=16, num_classes=5, attn_backend="math",
                    grad_checkpointing=False)
    assert isinstance(net, cls) and isinstance(net, DenoiserNet)
    assert (net.in_channels, net.resolution, net.num_classes) == (3, 16, 5)
    # The class table: one row per class and the null class, under the key the network states.
    table = net.state_dict()[net.class_table]
    assert table.shape[0] == 5 + 1
    # The call the Denoiser makes, shaped like the input.
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor([10.0, 900.0]), torch.tensor([0, 5])).shape == x.shape


def test_unconditional_nets_have_no_class_table():
    net = build_net("unet-tiny", in_channels=1, resolution=8, num_classes=None)
    assert net.num_classes == 0 and net.class_table not in net.state_dict()


def test_lora_targets_name_the_attention_and_transformer_mlp_layers():
    unet = build_net("unet-tiny", in_channels=1, resolution=8)
    names = adapted(unet)
    assert names and all(re.search(r"attn\.(qkv|proj)$", n) for n in names)
    assert len(names) == 2 * sum(isinstance(m, MultiHeadSelfAttention) for m in unet.modules())
    dit = build_net("dit-tiny", in_channels=1, resolution=8)
    names = adapted(dit)
    depth = len(dit.blocks)
    assert names == {f"blocks.{i}.{layer}" for i in range(depth)
                     for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert not any(n.startswith("cond.") for n in names)  # the noise-level MLP is not adapted


def test_every_preset_is_a_denoiser_net_and_other_modules_are_not():
    for name in ("unet-small", "dit-s-8"):
        assert isinstance(NETS.get(name)(in_channels=1, resolution=32), DenoiserNet)
    assert not isinstance(TinyNet(), DenoiserNet)  # no in_channels, resolution, class_table, lora_targets
    assert not isinstance(nn.Linear(2, 2), DenoiserNet)
