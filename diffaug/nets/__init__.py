"""Denoiser networks and their presets.

Every network is called as ``net(x, noise_level, class_labels=None)`` and returns a tensor shaped like x;
its full contract is :class:`DenoiserNet` (``diffaug.nets.protocol``). ``build_net(name, **overrides)``
builds a preset from ``NETS``; every preset accepts overrides for any constructor argument of its network
(in_channels, resolution, num_classes, attn_backend, grad_checkpointing). A network file registers its own
presets, and importing this package imports every module in it: a new network is one new file.
"""

from diffaug.nets.attention import ATTENTION_BACKENDS, MultiHeadSelfAttention, attention
from diffaug.nets.dit import DiT
from diffaug.nets.embeddings import (
    ClassEmbedding,
    ConditionEmbedding,
    NoiseLevelEmbedding,
    sinusoidal_embedding,
)
from diffaug.nets.presets import NETS, build_net
from diffaug.nets.protocol import DenoiserNet, NetFactory
from diffaug.nets.unet import UNet
from diffaug.registry import import_submodules

import_submodules(__name__)  # and every other module, so a new network file registers its presets

__all__ = [
    "ATTENTION_BACKENDS",
    "ClassEmbedding",
    "ConditionEmbedding",
    "DenoiserNet",
    "DiT",
    "MultiHeadSelfAttention",
    "NETS",
    "NetFactory",
    "NoiseLevelEmbedding",
    "UNet",
    "attention",
    "build_net",
    "sinusoidal_embedding",
]
