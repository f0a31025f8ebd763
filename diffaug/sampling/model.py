"""A checkpoint loaded for sampling: its denoiser and process, and its own config with the sampling and
export settings the user overrides (the model, objective and data settings come from the checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffaug.augset.files import file_sha256
from diffaug.build import build_autoencoder
from diffaug.config import ConfigError
from diffaug.config.load import parse_overrides, validate
from diffaug.data import ClassMap
from diffaug.nets.autoencoder import FrozenAutoencoder
from diffaug.sampling.generate import resolve_device
from diffaug.sampling.settings import SampleSettings

# What may change between training and sampling: how to sample and export, and where the data now lives.
OVERRIDABLE_SECTIONS = ("sampling", "export", "logging")
# model.autoencoder: a latent model's autoencoder folder where it is now (verified by content hash).
OVERRIDABLE_KEYS = ("data.path", "data.val_path", "data.num_workers", "model.autoencoder")


@dataclass
class LoadedModel:
    denoiser: torch.nn.Module
    process: Any
    cfg: DictConfig  # the checkpoint's config with the sampling/export overrides applied
    class_map: ClassMap
    checkpoint: Path
    checkpoint_sha256: str
    device: torch.device
    autoencoder: FrozenAutoencoder | None = None  # a latent model's: every sample is decoded by it

    @property
    def settings(self) -> SampleSettings:
        return SampleSettings.from_config(self.cfg)


def _check_override_keys(overrides: Sequence[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] in OVERRIDABLE_SECTIONS or key in OVERRIDABLE_KEYS:
            continue
        raise ConfigError(
            f"cannot override {key!r} when sampling a checkpoint: the model, objective and data settings "
            f"come from the checkpoint. Overridable: {', '.join(s + '.*' for s in OVERRIDABLE_SECTIONS)}, "
            f"{', '.join(OVERRIDABLE_KEYS)}"
        )


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's config with sampling/export ``key=value`` overrides, validated."""
    _check_override_keys(overrides)
    try:
        merged = OmegaConf.merge(cfg, parse_overrides(overrides))
    except OmegaConfBaseException as error:
        key = str(getattr(error, "full_key", "") or "?")
        section = OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else None
        valid = (
            f"; valid keys there: {', '.join(sorted(section.keys()))}"
            if isinstance(section, DictConfig)
            else ""
        )
        raise ConfigError(f"invalid override {key!r}: {str(error).splitlines()[0]}{valid}") from None
    validate(merged)  # type: ignore[arg-type]
    return merged  # type: ignore[return-value]


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), *, device: str | None = None
) -> LoadedModel:
    """Load a ``.ckpt`` or ``model.safetensors`` safely (no code is unpickled), EMA weights by default."""
    from diffaug.inference import load_for_inference

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    _check_override_keys(overrides)
    given = parse_overrides(overrides)
    use_ema = OmegaConf.select(given, "sampling.use_ema", default=True)
    denoiser, process, saved_cfg, class_map = load_for_inference(
        path, use_ema=bool(use_ema), map_location="cpu",
        autoencoder=OmegaConf.select(given, "model.autoencoder", default=None),
    )
    cfg = apply_overrides(saved_cfg, overrides)
    target = resolve_device(device or cfg.sampling.device)
    denoiser = denoiser.to(target).eval()
    autoencoder = build_autoencoder(cfg)
    if autoencoder is not None:
        autoencoder.to(target)
    return LoadedModel(denoiser, process, cfg, class_map, path, file_sha256(path), target, autoencoder)
