"""The benchmark configurations: one of our network presets and a diffusers reference of equal size each.

The references are built so that their parameter counts match ours (checked by the harness and the tests):
- UNets: diffusers' UNet2DModel with the same widths, depth, attention levels, norm groups and one attention
  head, as ours (``attention_head_dim=None``; diffusers' default of 8 channels per head changes the
  attention kernels, not the size). The ``unet-ddpm-cifar10`` pair is Ho et al.'s CIFAR-10 model.
- DiTs: diffusers' DiTTransformer2DModel with the same depth, width, heads and patch size. Each of its
  blocks owns a copy of the noise-level + class embedding, which diffusers' converter fills with the one
  embedding of the original DiT; the copies are tied here to that one module, so the parameter count equals
  the original (and ours). Its forward still recomputes the embedding in every block, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

PARAM_TOLERANCE = 0.02  # relative difference allowed between our and the reference's parameter counts
NUM_CLASSES = 10  # the DiTs are class-conditional (diffusers' DiT needs labels); the UNets unconditional


@dataclass(frozen=True)
class BenchConfig:
    name: str
    net: str  # our preset in diffaug.nets.NETS
    kind: str  # "unet" or "dit"
    channels: int
    resolution: int
    reference: dict = field(hash=False)  # keyword arguments of the diffusers model
    train_batch: dict = field(hash=False)  # per device type ("cpu", "cuda")
    tiny: bool = False  # small enough for every CPU run

    @property
    def num_classes(self) -> int | None:
        return NUM_CLASSES if self.kind == "dit" else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def batch_size(self, device_type: str) -> int:
        return self.train_batch["cuda" if device_type == "cuda" else "cpu"]


def _dit_reference(*, depth: int, width: int, heads: int, channels: int, resolution: int) -> dict:
    return dict(num_layers=depth, num_attention_heads=heads, attention_head_dim=width // heads,
                in_channels=channels, sample_size=resolution, patch_size=2, num_embeds_ada_norm=NUM_CLASSES)


CONFIGS: dict[str, BenchConfig] = {c.name: c for c in [
    BenchConfig(
        "unet-tiny-16", "unet-tiny", "unet", 1, 16, tiny=True, train_batch={"cpu": 64, "cuda": 256},
        reference=dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       resnet_time_scale_shift="scale_shift", attention_head_dim=None),
    ),
    BenchConfig(
        "dit-tiny-16", "dit-tiny", "dit", 1, 16, tiny=True, train_batch={"cpu": 64, "cuda": 256},
        reference=_dit_reference(depth=2, width=64, heads=4, channels=1, resolution=16),
    ),
    BenchConfig(
        "unet-cifar10-32", "unet-ddpm-cifar10", "unet", 3, 32, train_batch={"cpu": 8, "cuda": 128},
        reference=dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                       layers_per_block=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1,
                       attention_head_dim=None),
    ),
    # DiT-S/2 and DiT-B/2 on 32x32x4 inputs: the latent size of 256x256 images under the SD VAE.
    BenchConfig(
        "dit-s-2-latent32", "dit-s-2", "dit", 4, 32, train_batch={"cpu": 8, "cuda": 256},
        reference=_dit_reference(depth=12, width=384, heads=6, channels=4, resolution=32),
    ),
    BenchConfig(
        "dit-b-2-latent32", "dit-b-2", "dit", 4, 32, train_batch={"cpu": 8, "cuda": 256},
        reference=_dit_reference(depth=12, width=768, heads=12, channels=4, resolution=32),
    ),
]}

SUITES: dict[str, list[str]] = {
    "cpu": ["unet-tiny-16", "dit-tiny-16"],
    "gpu": ["unet-cifar10-32", "dit-s-2-latent32", "dit-b-2-latent32"],
    "full": list(CONFIGS),
}


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor once (nn.Module.parameters() de-duplicates)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_ours(config: BenchConfig) -> nn.Module:
    """Our network of ``config``, as diffaug.build makes it from the config the harness loads."""
    from diffaug.nets import build_net

    return build_net(config.net, in_channels=config.channels, resolution=config.resolution,
                     num_classes=config.num_classes)


def build_reference(config: BenchConfig) -> nn.Module:
    """The diffusers network of ``config``, in training mode."""
    if config.kind == "unet":
        from diffusers import UNet2DModel

        return UNet2DModel(**config.reference)
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(**config.reference)
    shared = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = shared
    return model


def reference_forward(config: BenchConfig) -> Callable:
    """``fn(model, x, timesteps, labels) -> prediction`` in the calling convention of the reference model."""
    if config.kind == "unet":
        return lambda model, x, t, labels: model(x, t).sample
    return lambda model, x, t, labels: model(x, timestep=t, class_labels=labels).sample
