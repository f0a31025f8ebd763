"""Diffusion Transformer (Peebles & Xie 2023) with adaLN-Zero conditioning.

Patchify -> fixed 2-D sin-cos position embedding -> transformer blocks whose LayerNorm shift/scale and
residual gates come from the noise level + class embedding -> final adaptive LayerNorm + linear -> unpatchify.
The modulation layers and the final linear start at zero, so every block starts as the identity and the
network outputs exactly zero at initialisation.
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
from einops import rearrange
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffaug.nets.attention import ATTENTION_LORA_TARGETS, AttentionBackend, MultiHeadSelfAttention
from diffaug.nets.checks import check_image_batch
from diffaug.nets.embeddings import CLASS_TABLE, ConditionEmbedding
from diffaug.nets.presets import NETS, preset


def sincos_2d_position_embedding(dim: int, grid_size: int) -> Tensor:
    """(grid_size**2, dim) fixed embedding; first half encodes the column, second half the row."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (G, G): row-major like PatchEmbed's tokens

    def axis(pos: Tensor) -> Tensor:  # (G*G,) -> (G*G, D/2)
        args = pos[:, None] * omega[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([axis(cols.flatten()), axis(rows.flatten())], dim=1).float()  # (G*G, D)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:  # (N, T, D), (N, D), (N, D)
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """x += gate_msa * Attn(modulate(LN(x))); x += gate_mlp * MLP(modulate(LN(x)))."""

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float, backend: AttentionBackend):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadSelfAttention(dim=hidden_size, num_heads=num_heads, backend=backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=partial(nn.GELU, approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # (N, T, D), (N, D) -> (N, T, D)
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa[:, None, :] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None, :] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Adaptive LayerNorm then a linear map from each token to its patch's p*p*C_out pixels."""

    def __init__(self, *, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # (N, T, D), (N, D) -> (N, T, p*p*C_out)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """forward(x (N, C, H, W), noise_level (N,), class_labels (N,) | None) -> (N, C, H, W).

    learn_sigma=True doubles the output channels (N, 2C, H, W) as in the paper; it exists to match the paper's
    parameter counts and checkpoints, the diffusion objectives here expect learn_sigma=False.
    """

    class_table = CLASS_TABLE
    # Attention projections and the transformer blocks' MLPs (not the MLP that embeds the noise level).
    lora_targets = (*ATTENTION_LORA_TARGETS, r"(^|\.)blocks\.\d+\.mlp\.fc[12]$")

    def __init__(
        self,
        *,
        in_channels: int = 3,
        resolution: int = 32,
        patch_size: int = 2,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        attn_backend: AttentionBackend = "sdpa",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if in_channels < 1 or depth < 1 or patch_size < 1:
            raise ValueError(
                f"in_channels, depth and patch_size must be >= 1, got {in_channels}, {depth}, {patch_size}"
            )
        if resolution < 1 or resolution % patch_size:
            divisors = [p for p in (1, 2, 4, 8) if resolution % p == 0]
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}; "
                             f"use a patch size that divides it, e.g. one of {divisors}")
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes or 0
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.grad_checkpointing = grad_checkpointing
        grid = resolution // patch_size

        self.patch_embed = PatchEmbed(resolution, patch_size, in_channels, hidden_size, bias=True)
        # Fixed, so rebuilt from the config rather than stored in checkpoints.
        pos_embed = sincos_2d_position_embedding(hidden_size, grid)[None]  # (1, T, D)
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.cond = ConditionEmbedding(frequency_dim=256, embed_dim=hidden_size, num_classes=num_classes)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, backend=attn_backend)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size=hidden_size, patch_size=patch_size,
                                      out_channels=self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper's initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output layers.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cond.noise.mlp.fc1.weight, std=0.02)
        nn.init.normal_(self.cond.noise.mlp.fc2.weight, std=0.02)
        if self.cond.classes is not None:
            nn.init.normal_(self.cond.classes.table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def unpatchify(self, tokens: Tensor) -> Tensor:  # (N, T, p*p*C_out) -> (N, C_out, H, W)
        grid = self.resolution // self.patch_size
        p = self.patch_size
        return rearrange(tokens, "n (h w) (p q c) -> n c (h p) (w q)", h=grid, p=p, q=p)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        check_image_batch(x, channels=self.in_channels, resolution=self.resolution, net_name="DiT")
        c = self.cond(noise_level, class_labels, x.shape[0]).to(x.dtype)  # (N, D)
        h = self.patch_embed(x) + self.pos_embed.to(x.dtype)  # (N, T, D), T = (H/p)(W/p)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))  # (N, C_out, H, W)


# ------------------------------------------------------------------------------------------ presets

# The paper's S/B/L/XL (depth, width, heads) at patch sizes 2, 4 and 8 ("dit-b-4"), plus a tiny one for tests.
DIT_SIZES = {
    "s": dict(depth=12, hidden_size=384, num_heads=6),
    "b": dict(depth=12, hidden_size=768, num_heads=12),
    "l": dict(depth=24, hidden_size=1024, num_heads=16),
    "xl": dict(depth=28, hidden_size=1152, num_heads=16),
}
NETS.add("dit-tiny", preset(DiT, patch_size=2, depth=2, hidden_size=64, num_heads=4))
for _size, _patch in itertools.product(DIT_SIZES, (2, 4, 8)):
    NETS.add(f"dit-{_size}-{_patch}", preset(DiT, patch_size=_patch, **DIT_SIZES[_size]))
