"""Config -> components: the config sections read to build the parts of a run (data, network, process,
denoiser, objective, sampler options).

Every component takes explicit keyword arguments; these functions translate the config sections into them.
Nothing here knows about training: ``diffaug.training.assemble`` puts the LightningModule together from these
parts, and ``diffaug.inference`` rebuilds a trained denoiser from the config its checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, OmegaConf

from diffaug.config import ConfigError
from diffaug.data import DiffusionDataModule
from diffaug.diffusion.denoiser import Denoiser
from diffaug.diffusion.losses import Objective
from diffaug.diffusion.losses import build_objective as _objective_for
from diffaug.diffusion.process import GaussianProcess
from diffaug.diffusion.process import build_process as _process_by_name
from diffaug.nets import DenoiserNet
from diffaug.nets import build_net as _net_by_name
from diffaug.hardware import auto_num_workers, uses_cuda
from diffaug.latents import CachedLatentDataModule
from diffaug.nets.autoencoder import (AutoencoderError, FrozenAutoencoder, folder_sha256, load_frozen,
                                      read_spec)


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def conditional_num_classes(class_names: Sequence[str]) -> int | None:
    """Class-conditional (with a null class for guidance) when the data has more than one class."""
    return len(class_names) if len(class_names) > 1 else None


def sampler_options(cfg: DictConfig) -> dict:
    """Keyword options for ``diffaug.diffusion.sample`` beyond the sampler's name and steps: the sampler's
    own ``sampling.sampler_args`` and ``sampling.clip_x0``."""
    options = {**_plain(cfg.sampling.sampler_args), "clip_x0": bool(cfg.sampling.clip_x0)}
    if cfg.sampling.get("guidance_interval") is not None:  # absent when unset: earlier sets keep their identity
        options["guidance_interval"] = [float(v) for v in cfg.sampling.guidance_interval]
    return options


def build_datamodule(cfg: DictConfig) -> DiffusionDataModule:
    d = cfg.data
    return DiffusionDataModule(
        source=d.source,
        path=d.path,
        split=d.split,
        resolution=d.resolution,
        channels=d.channels,
        batch_size=d.batch_size,
        num_workers=(auto_num_workers(accelerator=cfg.training.accelerator, devices=cfg.training.devices)
                     if d.num_workers is None else d.num_workers),
        val_fraction=d.val_fraction,
        val_path=d.val_path,
        on_corrupt=d.on_corrupt,
        hflip=d.hflip,
        shuffle_buffer=d.shuffle_buffer,
        seed=d.seed,
        per_class_limit=d.per_class_limit,
        holdout_per_class=d.holdout_per_class,
        holdout_seed=d.holdout_seed,
        unlabelled=d.unlabelled,
        class_names=None if d.class_names is None else list(d.class_names),
        max_items=d.max_items,
    )


def denoiser_input_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(C, H, W) the denoiser works on: the images, or the autoencoder's latents of them."""
    if cfg.model.autoencoder is None:
        return (int(cfg.data.channels), int(cfg.data.resolution), int(cfg.data.resolution))
    return read_spec(cfg.model.autoencoder).latent_shape(int(cfg.data.resolution))


def build_autoencoder(cfg: DictConfig) -> FrozenAutoencoder | None:
    """The frozen autoencoder of a latent model (None for a pixel model). The first build records the
    folder's hash in the config (model.autoencoder_sha256), so every checkpoint carries it; a config that
    already names a hash is refused with a folder of other content."""
    m = cfg.model
    if m.autoencoder is None:
        if m.latent_cache:  # a latent preset whose autoencoder the user has not named yet
            raise ConfigError("model.latent_cache=true caches autoencoder latents, but model.autoencoder is not set: "
                              "set model.autoencoder to a local diffusers AutoencoderKL folder")
        return None
    try:
        autoencoder = load_frozen(m.autoencoder, channels=m.autoencoder_channels,
                                  expected_sha256=m.autoencoder_sha256)
    except AutoencoderError as error:
        raise ConfigError(str(error)) from None
    m.autoencoder_sha256 = autoencoder.sha256
    return autoencoder


def verify_autoencoder(cfg: DictConfig) -> None:
    """Refuse a latent model's config whose autoencoder folder no longer holds the one it recorded."""
    m = cfg.model
    if m.autoencoder is None or m.autoencoder_sha256 is None:
        return
    found = folder_sha256(m.autoencoder)
    if found != m.autoencoder_sha256:
        raise ConfigError(
            f"model.autoencoder={m.autoencoder} has content hash {found[:12]}, but this model was trained with "
            f"autoencoder {m.autoencoder_sha256[:12]}; point model.autoencoder at the autoencoder it was trained with")


def build_training_data(cfg: DictConfig, autoencoder: FrozenAutoencoder | None) -> LightningDataModule:
    """The training run's data module: images, or with ``model.latent_cache`` the cached latents of them."""
    inner = build_datamodule(cfg)
    if autoencoder is None or not cfg.model.latent_cache:
        return inner
    # Encoded where training runs: a large folder takes a GPU minutes and a CPU hours.
    device = "cuda" if uses_cuda(cfg.training.accelerator) else "cpu"
    return CachedLatentDataModule(inner, autoencoder, cache_dir=cfg.model.latent_cache_dir, device=device,
                                  progress=bool(cfg.logging.progress_bar))


def build_net(cfg: DictConfig, num_classes: int | None) -> DenoiserNet:
    channels, resolution, _ = denoiser_input_shape(cfg)
    return _net_by_name(
        cfg.model.net,
        in_channels=channels,
        resolution=resolution,
        num_classes=num_classes,
        attn_backend=cfg.model.attn_backend,
        grad_checkpointing=cfg.model.grad_checkpointing,
        **_plain(cfg.model.args),
    )


def build_process(cfg: DictConfig) -> GaussianProcess:
    return _process_by_name(cfg.objective.process, **_plain(cfg.objective.process_args))


def build_denoiser(cfg: DictConfig, num_classes: int | None) -> Denoiser:
    return Denoiser(
        build_net(cfg, num_classes),
        build_process(cfg),
        prediction=cfg.objective.prediction,
        num_classes=num_classes,
    )


def build_objective(cfg: DictConfig, process: GaussianProcess | None = None) -> Objective:
    return _objective_for(
        process or build_process(cfg), weighting=cfg.objective.weighting, **_plain(cfg.objective.args)
    )
