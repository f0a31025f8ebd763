"""Denoiser networks and their presets.

Every network is called as ``net(x, noise_level, class_labels=None)`` and returns a tensor shaped like x.
``build_net(name, **overrides)`` builds a preset from ``NETS``; every preset accepts overrides for any
constructor argument of its network (in_channels, resolution, num_classes, attn_backend, grad_checkpointing).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from diffaug.nets.attention import ATTENTION_BACKENDS, MultiHeadSelfAttention, attention
from diffaug.nets.dit import DiT
from diffaug.nets.embeddings import (
    ClassEmbedding,
    ConditionEmbedding,
    NoiseLevelEmbedding,
    sinusoidal_embedding,
)
from diffaug.nets.unet import UNet
from diffaug.registry import Registry

NetFactory = Callable[..., nn.Module]
NETS: Registry[NetFactory] = Registry("network preset")


def _build(net_class: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    valid = list(inspect.signature(net_class).parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(
            f"{net_class.__name__} has no argument(s) {unknown}; valid arguments: {', '.join(valid)}"
        )
    return net_class(**kwargs)


def _preset(net_class: type[nn.Module], **defaults: Any) -> NetFactory:
    """Factory building net_class from defaults updated by the caller's overrides."""
    return lambda **overrides: _build(net_class, {**defaults, **overrides})


def _unet_attention_at_lowest(**defaults: Any) -> NetFactory:
    """UNet factory whose attention sits at the lowest level wherever an overridden resolution puts it."""

    def factory(**overrides: Any) -> nn.Module:
        kwargs = {"resolution": 32, **defaults, **overrides}
        lowest = kwargs["resolution"] // 2 ** (len(kwargs["channel_mult"]) - 1)
        kwargs.setdefault("attention_resolutions", (lowest,))
        return _build(UNet, kwargs)

    return factory


# UNets. "unet-ddpm-cifar10" is Ho et al.'s CIFAR-10 model (35.7M); "unet-adm-cifar10" the improved-DDPM one.
NETS.add("unet-tiny", _unet_attention_at_lowest(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                                norm_groups=8))
NETS.add("unet-small", _unet_attention_at_lowest(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                                 norm_groups=8))
NETS.add("unet-ddpm-cifar10", _preset(UNet, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                                      attention_resolutions=(16,), dropout=0.1, use_scale_shift_norm=False))
NETS.add("unet-adm-cifar10", _preset(UNet, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
                                     attention_resolutions=(16, 8), num_heads=4, dropout=0.3))

# DiTs: the paper's S/B/L/XL (depth, width, heads) at patch sizes 2, 4 and 8, plus a tiny one for tests.
_DIT_S = dict(depth=12, hidden_size=384, num_heads=6)
_DIT_B = dict(depth=12, hidden_size=768, num_heads=12)
_DIT_L = dict(depth=24, hidden_size=1024, num_heads=16)
_DIT_XL = dict(depth=28, hidden_size=1152, num_heads=16)
NETS.add("dit-tiny", _preset(DiT, patch_size=2, depth=2, hidden_size=64, num_heads=4))
NETS.add("dit-s-2", _preset(DiT, patch_size=2, **_DIT_S))
NETS.add("dit-s-4", _preset(DiT, patch_size=4, **_DIT_S))
NETS.add("dit-s-8", _preset(DiT, patch_size=8, **_DIT_S))
NETS.add("dit-b-2", _preset(DiT, patch_size=2, **_DIT_B))
NETS.add("dit-b-4", _preset(DiT, patch_size=4, **_DIT_B))
NETS.add("dit-b-8", _preset(DiT, patch_size=8, **_DIT_B))
NETS.add("dit-l-2", _preset(DiT, patch_size=2, **_DIT_L))
NETS.add("dit-l-4", _preset(DiT, patch_size=4, **_DIT_L))
NETS.add("dit-l-8", _preset(DiT, patch_size=8, **_DIT_L))
NETS.add("dit-xl-2", _preset(DiT, patch_size=2, **_DIT_XL))
NETS.add("dit-xl-4", _preset(DiT, patch_size=4, **_DIT_XL))
NETS.add("dit-xl-8", _preset(DiT, patch_size=8, **_DIT_XL))


def build_net(name: str, **overrides: Any) -> nn.Module:
    """Build the preset `name` from NETS with keyword overrides (e.g. in_channels=1, resolution=28)."""
    return NETS.get(name)(**overrides)


__all__ = [
    "ATTENTION_BACKENDS",
    "ClassEmbedding",
    "ConditionEmbedding",
    "DiT",
    "MultiHeadSelfAttention",
    "NETS",
    "NoiseLevelEmbedding",
    "UNet",
    "attention",
    "build_net",
    "sinusoidal_embedding",
]
