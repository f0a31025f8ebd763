"""A frozen image autoencoder (a diffusers ``AutoencoderKL`` folder): latent diffusion trains the denoiser on its
latents and decodes samples back to pixels.

The autoencoder is never trained here: it is loaded in eval mode with gradients off and kept outside every
``nn.Module`` that training owns (the denoiser, its EMA, the optimiser, the checkpoints), so it is a plain
object, not a module. Its latents are ``(z - shift_factor) * scaling_factor``, both read from the folder's
own config (the SD VAE's 0.18215, SD3's 1.5305 / 0.0609), so that the denoiser sees roughly unit variance.

Grey-scale data with an RGB autoencoder needs an explicit channel mapping (``model.autoencoder_channels``):
``repeat`` copies the grey channel to three on the way in and averages the three on the way out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

ChannelMapping = Literal["match", "repeat"]
CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
AUTOENCODER_CLASS = "AutoencoderKL"
KEY = "model.autoencoder"


class AutoencoderError(ValueError):
    """An autoencoder folder that cannot be used, with what to change."""


@dataclass(frozen=True)
class AutoencoderSpec:
    """What the folder's config.json says about the latents, read without loading any weight."""

    path: str
    in_channels: int
    latent_channels: int
    downsample: int  # pixels per latent along each side
    scaling_factor: float
    shift_factor: float

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (self.latent_channels, resolution // self.downsample, resolution // self.downsample)


def read_spec(folder: str | Path) -> AutoencoderSpec:
    """The latent geometry of a diffusers ``AutoencoderKL`` folder (the one ``from_pretrained`` reads)."""
    path = Path(folder)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise AutoencoderError(f"{KEY}={folder}: no such folder; point it at a diffusers AutoencoderKL folder "
                               "(the one save_pretrained writes, with config.json and the weights)")
    if not config_path.is_file():
        raise AutoencoderError(f"{KEY}={folder} has no {CONFIG_FILE}; point it at a diffusers AutoencoderKL "
                               "folder (for Stable Diffusion pipelines, its vae/ sub-folder)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise AutoencoderError(f"{KEY}={folder}: {CONFIG_FILE} is not valid JSON ({error.msg})") from None
    name = config.get("_class_name")
    if name != AUTOENCODER_CLASS:
        raise AutoencoderError(f"{KEY}={folder} holds a {name or 'model of unknown class'}, not an "
                               f"{AUTOENCODER_CLASS}; point it at a diffusers {AUTOENCODER_CLASS} folder")
    if not _weight_files(path):
        raise AutoencoderError(f"{KEY}={folder} has no weights (*.safetensors or *.bin) beside {CONFIG_FILE}")
    shift = config.get("shift_factor")
    return AutoencoderSpec(
        path=str(path),
        in_channels=int(config.get("in_channels", 3)),
        latent_channels=int(config.get("latent_channels", 4)),
        downsample=2 ** (len(config.get("block_out_channels", [64])) - 1),
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
        shift_factor=0.0 if shift is None else float(shift),
    )


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def folder_sha256(folder: str | Path) -> str:
    """SHA-256 of the folder's config.json and weight files (names and bytes): the autoencoder's identity in
    checkpoints, latent caches and exported sets."""
    path = Path(folder)
    digest = hashlib.sha256()
    for file in [path / CONFIG_FILE, *_weight_files(path)]:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_channel_mapping(spec: AutoencoderSpec, data_channels: int, mapping: str) -> None:
    """Whether images of ``data_channels`` channels can go through the autoencoder with ``mapping``."""
    if mapping not in get_args(ChannelMapping):
        raise AutoencoderError(f"model.autoencoder_channels={mapping!r}; choose one of {get_args(ChannelMapping)}")
    if mapping == "repeat":
        if (data_channels, spec.in_channels) != (1, 3):
            raise AutoencoderError(
                f"model.autoencoder_channels=repeat maps grey data to a 3-channel autoencoder; here data.channels="
                f"{data_channels} and the autoencoder takes {spec.in_channels}: set model.autoencoder_channels=match")
    elif data_channels != spec.in_channels:
        hint = ("set model.autoencoder_channels=repeat (grey repeated to RGB, decoded RGB averaged back)"
                if (data_channels, spec.in_channels) == (1, 3) else f"set data.channels={spec.in_channels}")
        raise AutoencoderError(f"data.channels={data_channels} but the autoencoder at {spec.path} takes "
                               f"{spec.in_channels}-channel images; {hint}")


class FrozenAutoencoder:
    """Encode (N, C, H, W) images in [-1, 1] to scaled latents and decode them back; never trained.

    A plain object holding the diffusers model: assigned to a LightningModule it is no submodule, so it is in
    neither the parameters, the optimiser, the EMA nor any state dict.
    """

    def __init__(self, spec: AutoencoderSpec, *, sha256: str, channels: ChannelMapping = "match"):
        from diffusers import AutoencoderKL  # heavy: imported by latent runs only

        self.spec = spec
        self.sha256 = sha256
        self.channels = channels
        self.vae = AutoencoderKL.from_pretrained(spec.path).eval().requires_grad_(False)

    @property
    def image_channels(self) -> int:
        return 1 if self.channels == "repeat" else self.spec.in_channels

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = image_shape
        f = self.spec.downsample
        return (self.spec.latent_channels, h // f, w // f)

    def image_shape(self, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        _, h, w = latent_shape
        f = self.spec.downsample
        return (self.image_channels, h * f, w * f)

    def to(self, device: torch.device | str) -> FrozenAutoencoder:
        self.vae.to(device)
        return self

    # ------------------------------------------------------------------ encoding

    @torch.no_grad()
    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance (N, Cl, h, w) of images (N, C, H, W) in [-1, 1], unscaled."""
        x = images.to(self._device(), torch.float32)
        if self.channels == "repeat":
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W)
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def sample_latents(self, mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
        """Scaled latents: a posterior sample (the mean when ``generator`` is None)."""
        mean, logvar = mean.float(), logvar.float()
        z = mean
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
        return (z - self.spec.shift_factor) * self.spec.scaling_factor

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_latents(*self.moments(images), generator)

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(N, C, H, W) images, about [-1, 1] (not clamped), from scaled latents (N, Cl, h, w)."""
        z = latents.to(self._device(), torch.float32) / self.spec.scaling_factor + self.spec.shift_factor
        x = self.vae.decode(z).sample
        return x.mean(dim=1, keepdim=True) if self.channels == "repeat" else x

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device


_LOADED: dict[tuple[str, str, str], FrozenAutoencoder] = {}


def load_frozen(folder: str | Path, *, channels: ChannelMapping = "match",
                expected_sha256: str | None = None) -> FrozenAutoencoder:
    """The autoencoder of ``folder``, loaded once per process and folder content. ``expected_sha256``: the
    hash a checkpoint recorded; a folder whose content differs is refused."""
    spec = read_spec(folder)
    sha256 = folder_sha256(folder)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise AutoencoderError(
            f"{KEY}={folder} has content hash {sha256[:12]}, but this model was trained with autoencoder "
            f"{expected_sha256[:12]}; point {KEY} at the autoencoder it was trained with")
    key = (str(Path(folder).resolve()), sha256, channels)
    if key not in _LOADED:
        _LOADED[key] = FrozenAutoencoder(spec, sha256=sha256, channels=channels)
    return _LOADED[key]
