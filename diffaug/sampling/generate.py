"""Turn work items into uint8 images with a sampler from the diffusion core.

:func:`draw` is the one sampling path: ``diffaug sample``, ``diffaug export``, the training sample grid and
the quality monitor all make their images through it, from items whose seeds come from
:func:`diffaug.augset.derive_seed`, so equal weights and settings give equal images everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from diffaug.augset.plan import WorkItem, build_items
from diffaug.config import ConfigError
from diffaug.data.transforms import to_uint8
from diffaug.nets.autoencoder import FrozenAutoencoder
from diffaug.sampling.fixed_shape import FixedShapeDenoiser, apply_in_chunks
from diffaug.sampling.settings import SampleSettings

log = logging.getLogger(__name__)

Precision = Literal["32", "bf16", "16"]
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"invalid value for config key 'sampling.device': {name!r} ({error}); "
            "use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"sampling.device={name} but CUDA is not available here; use sampling.device=cpu or auto"
        )
    return device


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision sampling on ``device`` runs in: ``precision`` on CUDA, "32" elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"invalid value for config key 'sampling.precision': {precision!r}; "
            f"choose one of {', '.join(PRECISIONS)}"
        )
    return precision if device.type == "cuda" else "32"


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA; on CPU always fp32 (CPU bf16 convolutions are many times slower)."""
    dtype = PRECISIONS[effective_precision(device, precision)]
    if dtype is None:
        if precision != "32":
            log.warning("sampling.precision=%s applies on CUDA only; sampling on %s in fp32", precision, device)
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def is_conditional(denoiser: Any) -> bool:
    return bool(getattr(denoiser, "num_classes", None))


def image_shape(denoiser: Any, autoencoder: FrozenAutoencoder | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the images the denoiser's network makes, decoded by ``autoencoder`` for a latent model."""
    net = denoiser.net
    shape = (int(net.in_channels), int(net.resolution), int(net.resolution))
    return shape if autoencoder is None else autoencoder.image_shape(shape)


def class_items(
    counts: Sequence[int], class_names: Sequence[str], settings: SampleSettings
) -> list[WorkItem]:
    """Images 0 .. counts[c]-1 of every class c, ordered by (class, index): the first items of an export
    with the same settings."""
    return build_items(counts, base_seed=settings.seed, guidance=settings.guidance(class_names),
                       random_guidance=settings.random_guidance)


def draw(
    denoiser: Any,
    process: Any,
    items: Sequence[WorkItem],
    *,
    settings: SampleSettings,
    device: torch.device,
    shape: tuple[int, int, int] | None = None,
    x_start: Tensor | None = None,
    strength: float | None = None,
    autoencoder: FrozenAutoencoder | None = None,
) -> Tensor:
    """(N, C, H, W) uint8 images of ``items``, generated ``settings.batch_size`` at a time.

    ``shape`` (C, H, W) of the images defaults to the denoiser network's (decoded, for a latent model);
    ``x_start`` / ``strength`` / ``autoencoder`` as in :func:`generate_images`.
    """
    shape = shape or image_shape(denoiser, autoencoder)
    size = settings.batch_size
    batches = [
        generate_images(
            denoiser,
            process,
            items[start : start + size],
            image_shape=shape,
            sampler=settings.sampler,
            steps=settings.steps,
            sampler_args=settings.sampler_args,
            device=device,
            precision=settings.precision,  # type: ignore[arg-type]
            microbatch=settings.microbatch,
            x_start=None if x_start is None else x_start[start : start + size],
            strength=strength,
            autoencoder=autoencoder,
        )
        for start in range(0, len(items), size)
    ]
    return torch.cat(batches) if batches else torch.empty((0, *shape), dtype=torch.uint8)


@torch.no_grad()
def generate_images(
    denoiser: Callable[..., Tensor],
    process: Any,
    items: Sequence[WorkItem],
    *,
    image_shape: tuple[int, int, int],
    sampler: str,
    steps: int,
    sampler_args: Mapping[str, Any] | None = None,
    device: torch.device,
    precision: Precision = "32",
    microbatch: int = 32,
    x_start: Tensor | None = None,
    strength: float | None = None,
    autoencoder: FrozenAutoencoder | None = None,
) -> Tensor:
    """(N, C, H, W) uint8 images, image n made from ``items[n]``'s seed, class and guidance only.

    The network runs on chunks of exactly ``microbatch`` rows (see :class:`FixedShapeDenoiser`).
    ``x_start`` (N, C, H, W) in [-1, 1] with ``strength`` makes SDEdit variations of real images.
    ``autoencoder``: a latent model's; ``image_shape`` is then the decoded images', sampling runs on latents,
    and encoding (of ``x_start``) and decoding run on ``microbatch`` rows too.
    """
    if autoencoder is not None:
        return _generate_latent(denoiser, process, items, autoencoder, image_shape=image_shape, sampler=sampler,
                                steps=steps, sampler_args=sampler_args, device=device, precision=precision,
                                microbatch=microbatch, x_start=x_start, strength=strength)
    return to_uint8(sample_x0(
        denoiser, process, items, image_shape=image_shape, sampler=sampler, steps=steps,
        sampler_args=sampler_args, device=device, precision=precision, microbatch=microbatch, x_start=x_start,
        strength=strength)).cpu()


@torch.no_grad()
def sample_x0(
    denoiser: Callable[..., Tensor],
    process: Any,
    items: Sequence[WorkItem],
    *,
    image_shape: tuple[int, int, int],
    sampler: str,
    steps: int,
    sampler_args: Mapping[str, Any] | None = None,
    device: torch.device,
    precision: Precision = "32",
    microbatch: int = 32,
    x_start: Tensor | None = None,
    strength: float | None = None,
) -> Tensor:
    """(N, C, H, W) float32 samples of the denoiser's own space (images, or a latent model's latents), as
    :func:`generate_images` describes them."""
    from diffaug.diffusion import sample  # the diffusion core's single sampler entry point

    if not items:
        return torch.empty((0, *image_shape), dtype=torch.float32)
    conditional = is_conditional(denoiser)
    # Guidance needs a class-conditional network; an unconditional one samples with scale 1.
    unguided = [not conditional or it.guidance == 1.0 for it in items]
    if any(unguided) and not all(unguided):
        # A batch whose scales are all 1 runs one conditional pass, any other batch the guided formula,
        # which rounds differently even where the scale is 1: sample the two groups apart so that an
        # image never depends on the scales of its batch mates.
        groups = [[n for n, u in enumerate(unguided) if u], [n for n, u in enumerate(unguided) if not u]]
        out = torch.empty((len(items), *image_shape), dtype=torch.float32, device=device)
        for group in groups:
            out[group] = sample_x0(
                denoiser,
                process,
                [items[n] for n in group],
                image_shape=image_shape,
                sampler=sampler,
                steps=steps,
                sampler_args=sampler_args,
                device=device,
                precision=precision,
                microbatch=microbatch,
                x_start=None if x_start is None else x_start[group],
                strength=strength,
            )
        return out

    labels = (
        torch.tensor([it.class_index for it in items], dtype=torch.int64, device=device)
        if conditional
        else None
    )
    guidance = torch.tensor(
        [1.0 if u else it.guidance for it, u in zip(items, unguided, strict=True)], dtype=torch.float32
    )
    with autocast_for(device, precision):
        x0 = sample(
            sampler,
            FixedShapeDenoiser(denoiser, microbatch),
            process,
            shape=(len(items), *image_shape),
            seeds=[it.seed for it in items],
            class_labels=labels,
            steps=steps,
            guidance_scale=guidance,
            x_start=None if x_start is None else x_start.to(device),
            strength=strength if x_start is not None else None,
            device=device,
            **dict(sampler_args or {}),
        )  # (N, C, H, W)
    return x0.float()


def _generate_latent(denoiser: Callable[..., Tensor], process: Any, items: Sequence[WorkItem],
                     autoencoder: FrozenAutoencoder, *, image_shape: tuple[int, int, int], microbatch: int,
                     sampler_args: Mapping[str, Any] | None, x_start: Tensor | None, device: torch.device,
                     **sampling: Any) -> Tensor:
    """:func:`generate_images` of a latent model: sample latents, decode them to images.

    ``clip_x0`` clamps to the image range [-1, 1], which only the decoded images have (``to_uint8`` clamps
    them); latents have no such range, and clamping their x0 predictions would distort every sample.
    """
    if not items:
        return torch.empty((0, *image_shape), dtype=torch.uint8)
    options = {**(sampler_args or {}), "clip_x0": False}
    autoencoder.to(device)
    if x_start is not None:  # SDEdit from real images starts from their latents (the posterior mean)
        x_start = apply_in_chunks(autoencoder.encode, microbatch, x_start.to(device))
    latents = sample_x0(denoiser, process, items, image_shape=autoencoder.latent_shape(image_shape),
                        sampler_args=options, device=device, microbatch=microbatch, x_start=x_start,
                        **sampling)  # (N, Cl, h, w)
    return to_uint8(apply_in_chunks(autoencoder.decode, microbatch, latents)).cpu()  # (N, C, H, W)
