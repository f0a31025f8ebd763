"""ADM-style UNet denoiser (Ho et al. 2020; Dhariwal & Nichol 2021).

Encoder levels of residual blocks with conv down-sampling, a middle (res, attention, res), and a decoder that
concatenates the encoder's skip activations. The noise level + class embedding enters every residual block,
by default through an adaptive GroupNorm scale/shift. The last conv of every residual block, the output
projection of every attention block and the output conv start at zero, so the network outputs exactly zero at
initialisation and each block starts as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from diffaug.nets.attention import ATTENTION_LORA_TARGETS, AttentionBackend, MultiHeadSelfAttention
from diffaug.nets.checks import check_image_batch
from diffaug.nets.embeddings import CLASS_TABLE, ConditionEmbedding
from diffaug.nets.presets import NETS, NetFactory, build_with, preset


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


Resample = Literal["up", "down"] | None


def _resample(x: Tensor, resample: Resample) -> Tensor:
    if resample == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if resample == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, embedding injection, GroupNorm-SiLU-dropout-conv(zero), plus a (1x1) skip.

    resample "down" / "up" makes it a BigGAN-style resampling block (ADM's resblock_updown): both the residual
    path (after the first norm and SiLU, before the first conv) and the skip are average-pooled by 2, or
    nearest-upsampled by 2; no parameters are added.
    """

    def __init__(self, *, in_channels: int, out_channels: int, embed_dim: int, dropout: float,
                 norm_groups: int, use_scale_shift_norm: bool, resample: Resample = None):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        # scale and shift for the adaptive norm, or one additive bias per channel (DDPM).
        self.embed_proj = nn.Linear(embed_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # (N, C_in, H, W), (N, D) -> (N, C_out, H', W')
        h = self.conv1(_resample(F.silu(self.norm1(x)), self.resample))  # (N, C_out, H', W')
        x = _resample(x, self.resample)
        e = self.embed_proj(F.silu(emb))[:, :, None, None]  # (N, 2 C_out or C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)  # (N, C_out, 1, 1) each
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all H*W positions, residual; the output projection starts at zero."""

    def __init__(self, *, channels: int, num_heads: int, norm_groups: int, backend: AttentionBackend):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.attn = MultiHeadSelfAttention(dim=channels, num_heads=num_heads, backend=backend)
        zero_module(self.attn.proj)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        tokens = rearrange(self.norm(x), "n c h w -> n (h w) c")  # (N, HW, C)
        h = rearrange(self.attn(tokens), "n (h w) c -> n c h w", h=x.shape[2])
        return x + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """Sequential that hands the conditioning embedding to the residual blocks only."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """ADM/DDPM UNet: forward(x (N, C, H, W), noise_level (N,), class_labels (N,) | None) -> (N, C, H, W).

    attention_resolutions are in pixels (e.g. (16,) puts attention at the 16x16 level); the middle block
    always attends. Heads: head_channels (channels per head) if given, else num_heads. All GroupNorms use
    norm_groups groups, which must divide model_channels (every width is a multiple of it).
    resblock_updown down- and up-samples with residual blocks (average pool / nearest, as in Dhariwal & Nichol's
    ADM and BigGAN) instead of a strided conv / nearest + conv.
    channels_last runs the network on NHWC weights and activations, which some convolution kernels prefer
    (measured on one CPU: 4-8% faster in fp32, 7-18% slower in bf16; see benchmarks/); inputs and outputs
    keep the usual layout.
    """

    class_table = CLASS_TABLE
    lora_targets = ATTENTION_LORA_TARGETS

    def __init__(
        self,
        *,
        in_channels: int = 3,
        resolution: int = 32,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        head_channels: int | None = None,
        num_classes: int | None = None,
        use_scale_shift_norm: bool = True,
        norm_groups: int = 32,
        resblock_updown: bool = False,
        attn_backend: AttentionBackend = "sdpa",
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        channel_mult = tuple(channel_mult)
        if in_channels < 1 or model_channels < 1 or num_res_blocks < 1 or not channel_mult:
            raise ValueError(
                "in_channels, model_channels and num_res_blocks must be >= 1 and channel_mult non-empty; "
                f"got {in_channels}, {model_channels}, {num_res_blocks}, {channel_mult}"
            )
        factor = 2 ** (len(channel_mult) - 1)
        if resolution < 1 or resolution % factor:
            raise ValueError(
                f"resolution {resolution} is not divisible by 2**{len(channel_mult) - 1} = {factor}, "
                f"which the {len(channel_mult) - 1} down-sampling steps of channel_mult={channel_mult} need; "
                f"use a resolution that is a multiple of {factor}, or fewer levels in channel_mult"
            )
        level_resolutions = [resolution // 2**level for level in range(len(channel_mult))]
        unknown = sorted(set(attention_resolutions) - set(level_resolutions))
        if unknown:
            raise ValueError(f"attention_resolutions {unknown} are not levels of this UNet; valid: "
                             f"{level_resolutions} (resolution {resolution}, channel_mult {channel_mult})")
        if norm_groups < 1 or model_channels % norm_groups:
            raise ValueError(f"norm_groups={norm_groups} must divide model_channels={model_channels} "
                             "(every layer width is a multiple of model_channels); e.g. norm_groups=8")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes or 0
        self.grad_checkpointing = grad_checkpointing
        self.channels_last = channels_last

        def heads(channels: int) -> int:
            if head_channels is None:
                return num_heads
            if channels % head_channels:
                raise ValueError(f"head_channels={head_channels} must divide every attention width, "
                                 f"got a width of {channels}")
            return channels // head_channels

        embed_dim = 4 * model_channels
        self.cond = ConditionEmbedding(frequency_dim=model_channels, embed_dim=embed_dim,
                                       num_classes=num_classes)

        def res(c_in: int, c_out: int, resample: Resample = None) -> ResBlock:
            return ResBlock(in_channels=c_in, out_channels=c_out, embed_dim=embed_dim, dropout=dropout,
                            norm_groups=norm_groups, use_scale_shift_norm=use_scale_shift_norm,
                            resample=resample)

        def down(c: int) -> nn.Module:
            return res(c, c, "down") if resblock_updown else Downsample(c)

        def up(c: int) -> nn.Module:
            return res(c, c, "up") if resblock_updown else Upsample(c)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(channels=c, num_heads=heads(c), norm_groups=norm_groups,
                                  backend=attn_backend)

        # Encoder: every block's output is kept as a skip for the decoder.
        conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList([EmbedSequential(conv_in)])
        skip_channels, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if level_resolutions[level] in attention_resolutions:
                    layers.append(attn(ch))
                self.down_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down_blocks.append(EmbedSequential(down(ch)))
                skip_channels.append(ch)

        self.middle = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        # Decoder: num_res_blocks + 1 blocks per level, one per encoder skip, up-sampling after each level.
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if level_resolutions[level] in attention_resolutions:
                    layers.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    layers.append(up(ch))
                self.up_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, in_channels, 3, padding=1))
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)  # conv weights; kept by .to(device), copies, loading

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _run(self, block: EmbedSequential, h: Tensor, emb: Tensor) -> Tensor:
        # Recomputing activations in backward trades compute for memory; only worth it when grads are taken.
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        check_image_batch(x, channels=self.in_channels, resolution=self.resolution, net_name="UNet")
        emb = self.cond(noise_level, class_labels, x.shape[0]).to(x.dtype)  # (N, 4 model_channels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h, skips = x, []
        for block in self.down_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)  # (N, C_max, H / 2**levels, W / 2**levels)
        for block in self.up_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).contiguous()  # (N, in_channels, H, W), in the usual layout whatever the inside


# ------------------------------------------------------------------------------------------ presets


def _attention_at_lowest(**defaults: Any) -> NetFactory:
    """UNet factory whose attention sits at the lowest level wherever an overridden resolution puts it."""

    def factory(**overrides: Any) -> nn.Module:
        kwargs = {"resolution": 32, **defaults, **overrides}
        lowest = kwargs["resolution"] // 2 ** (len(kwargs["channel_mult"]) - 1)
        kwargs.setdefault("attention_resolutions", (lowest,))
        return build_with(UNet, kwargs)

    return factory


# "unet" is the configurable base (every argument from model.args; converted ADM checkpoints use it);
# "unet-ddpm-cifar10" is Ho et al.'s CIFAR-10 model (35.7M); "unet-adm-cifar10" the improved-DDPM one.
NETS.add("unet", preset(UNet))
NETS.add("unet-tiny", _attention_at_lowest(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                           norm_groups=8))
NETS.add("unet-small", _attention_at_lowest(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                            norm_groups=8))
NETS.add("unet-ddpm-cifar10", preset(UNet, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                                     attention_resolutions=(16,), dropout=0.1, use_scale_shift_norm=False))
NETS.add("unet-adm-cifar10", preset(UNet, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
                                    attention_resolutions=(16, 8), num_heads=4, dropout=0.3))
