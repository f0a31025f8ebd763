"""Tiny real checkpoints and output-tree helpers for the sampling and export tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from diffaug.build import build_denoiser, conditional_num_classes
from diffaug.checkpoint import save_weights
from diffaug.config import load_config, to_dict

# 8x8 grey images, a 16-channel UNet, DDPM with 3 DDIM steps, network calls of 4 rows: a few milliseconds
# per image on a CPU.
TINY_OVERRIDES = [
    "data.source=sklearn_digits",
    "data.resolution=8",
    "data.channels=1",
    "model.net=unet-tiny",
    "model.args={model_channels: 16}",
    "objective.process=ddpm",
    # x0 prediction: a barely trained network then gives images in range rather than amplified noise.
    "objective.prediction=x0",
    "sampling.sampler=ddim",
    "sampling.steps=3",
    "sampling.microbatch=4",
    "sampling.device=cpu",
    "logging.progress_bar=false",
]
DIGIT_NAMES = tuple(str(d) for d in range(10))


def make_checkpoint(
    directory: Path,
    *,
    class_names: tuple[str, ...] = DIGIT_NAMES,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """``model.safetensors`` (the inference format training writes) of a tiny UNet whose weights are its
    initialisation plus seeded noise: the zero-initialised output layers would otherwise make every
    prediction zero and every class look alike. Its samples are mid-range grey values (few clipped
    pixels) that differ by class and by seed, so byte comparisons of exported images mean something."""
    cfg = load_config([], [*TINY_OVERRIDES, *overrides])
    denoiser = build_denoiser(cfg, conditional_num_classes(class_names))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return save_weights(
        directory / "model.safetensors",
        denoiser.state_dict(),
        config=to_dict(cfg),
        class_names=list(class_names),
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under root (hidden files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module", autouse=False)
def one_cpu_thread():
    """Sample with one intra-op thread: on a small shared machine, two OpenMP threads fighting other
    processes for the cores made these tiny networks many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
