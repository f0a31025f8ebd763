"""A trained model for inference: the denoiser of a checkpoint, rebuilt from the config the file carries.

It sits above both the file format (``diffaug.checkpoint``) and the builder (``diffaug.build``), so that
neither has to know the other.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from diffaug.build import build_denoiser, conditional_num_classes, verify_autoencoder
from diffaug.checkpoint import load_state_strictly, read_weights
from diffaug.data import ClassMap
from diffaug.diffusion.denoiser import Denoiser
from diffaug.diffusion.process import GaussianProcess


def load_for_inference(
    path: str | os.PathLike, use_ema: bool = True, map_location: Any = "cpu", *, autoencoder: str | None = None
) -> tuple[Denoiser, GaussianProcess, DictConfig, ClassMap]:
    """(denoiser in eval mode, process, config, class map) from a .ckpt or model.safetensors.

    ``autoencoder``: where a latent model's autoencoder is now, if it moved since training; it must hold the
    same files (content hash) as the one recorded."""
    state, cfg, class_map = read_weights(path, use_ema=use_ema, map_location=map_location, autoencoder=autoencoder)
    verify_autoencoder(cfg)  # a latent model decodes only with the autoencoder it was trained with
    denoiser = build_denoiser(cfg, conditional_num_classes(class_map.names))
    load_state_strictly(denoiser, state, source=str(path))
    denoiser.to(map_location).eval().requires_grad_(False)
    return denoiser, denoiser.process, cfg, class_map
