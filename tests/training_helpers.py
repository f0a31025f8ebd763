"""Shared helpers for the training tests: tiny configs and weight comparison."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import DictConfig

from diffaug.config import load_config

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny nets on a shared 2-core machine: one intra-op thread avoids OpenMP spin-waits (10x faster)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# A 16-channel one-level UNet on 8x8 digits: a training step takes milliseconds on a CPU.
TINY_NET = "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}"


def tiny_config(run_dir: Path, *overrides: str, net: str | None = TINY_NET) -> DictConfig:
    """sklearn digits at 8x8, tiny UNet (``net``: its model.args override, None for none), CPU, no progress
    bar, no logger; overrides win."""
    base = [
        f"run_dir={run_dir}",
        "data.resolution=8",
        "data.batch_size=8",
        "data.max_items=32",
        *([net] if net else []),
        "training.max_steps=8",
        "training.warmup_steps=2",
        "training.checkpoint_every_n_steps=4",
        "training.log_every_n_steps=2",
        "training.accelerator=cpu",
        "training.devices=1",
        "training.ema_halflife_kimg=0.05",
        "sampling.steps=4",
        "logging.logger=none",
        "logging.progress_bar=false",
    ]
    return load_config([], [*base, *overrides])


class StopAtStep(pl.Callback):
    """Ends fit gracefully once ``step`` optimizer steps are done, like a job stopped after a checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def state_of(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- image folders whose pixels name the image

ID_STEP = 4  # image k is a constant grey image of level k * ID_STEP, so a batch tells which items it holds


def make_id_folder(root: Path, class_names: list[str], per_class: int, size: int = 8) -> Path:
    """root/<class>/img_k.png, constant grey images with distinct ids k across all classes."""
    import numpy as np
    from PIL import Image

    for c, name in enumerate(class_names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            k = c * per_class + i
            assert k * ID_STEP <= 255, "too many images for distinct grey levels"
            image = Image.fromarray(np.full((size, size), k * ID_STEP, dtype=np.uint8))
            image.save(root / name / f"img_{k}.png")
    return root


def batch_ids(images: torch.Tensor) -> list[int]:
    """Ids of a batch (N, 1, H, W) in [-1, 1] of id images."""
    from diffaug.data import to_uint8

    return [p // ID_STEP for p in to_uint8(images)[:, 0, 0, 0].tolist()]
