"""Conditioning embeddings shared by the UNet and the DiT: noise level -> vector, class label -> vector."""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from diffaug.nets.checks import check_class_labels, check_noise_level


def sinusoidal_embedding(noise_level: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(N,) real values -> (N, dim) features [cos(v w_i) | sin(v w_i)], w_i = max_period**(-i / (dim/2)).

    The fastest frequency (w = 1) separates values one unit apart; the slowest has a period of
    2 pi max_period ~ 63k, far wider than [-1000, 1000], so no two values in that range share a code.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    # float32 even under autocast or a bf16 default dtype (bf16-true): v * w at v ~ 1000 loses the fast
    # frequencies entirely in bf16/fp16.
    steps = torch.arange(half, dtype=torch.float32, device=noise_level.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)  # (D/2,)
    args = noise_level.float()[:, None] * freqs[None, :]  # (N, D/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (N, D)


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of the noise level followed by a two-layer SiLU MLP."""

    def __init__(self, *, frequency_dim: int, embed_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = Mlp(frequency_dim, hidden_features=embed_dim, out_features=embed_dim, act_layer=nn.SiLU)

    def forward(self, noise_level: Tensor) -> Tensor:  # (N,) -> (N, D)
        features = sinusoidal_embedding(noise_level, self.frequency_dim)  # (N, F)
        return self.mlp(features.to(self.mlp.fc1.weight.dtype))


class ClassEmbedding(nn.Module):
    """num_classes + 1 rows; the last row is the learned null class for classifier-free guidance."""

    def __init__(self, *, num_classes: int, embed_dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for a class embedding, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, embed_dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, class_labels: Tensor) -> Tensor:  # (N,) int -> (N, D)
        return self.table(class_labels)


# The class table's state-dict key in a network that keeps its ConditionEmbedding as ``self.cond``.
CLASS_TABLE = "cond.classes.table.weight"


class ConditionEmbedding(nn.Module):
    """emb = NoiseLevelEmbedding(noise_level) [+ ClassEmbedding(class_labels)], with input validation.

    num_classes None or 0 builds an unconditional embedding that ignores class_labels.
    """

    def __init__(self, *, frequency_dim: int, embed_dim: int, num_classes: int | None):
        super().__init__()
        if num_classes is not None and num_classes < 0:
            raise ValueError(f"num_classes must be None, 0 (unconditional) or positive, got {num_classes}")
        self.num_classes = num_classes or 0
        self.noise = NoiseLevelEmbedding(frequency_dim=frequency_dim, embed_dim=embed_dim)
        self.classes = (
            ClassEmbedding(num_classes=self.num_classes, embed_dim=embed_dim) if self.num_classes else None
        )

    def forward(self, noise_level: Tensor, class_labels: Tensor | None, batch_size: int) -> Tensor:
        check_noise_level(noise_level, batch_size)
        emb = self.noise(noise_level)  # (N, D)
        if self.classes is not None:
            check_class_labels(class_labels, batch_size, self.num_classes)
            emb = emb + self.classes(class_labels)  # (N, D)
        return emb
