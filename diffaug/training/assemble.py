"""Config -> the LightningModule's parts: the denoiser (fine-tuning applied), its objective and the settings.

``DiffusionModule.from_config`` turns these into the module; they are built here, from ``diffaug.build``'s
components, so that the builder below knows nothing of training and the module can rebuild itself from the
config a checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from diffaug.build import build_autoencoder, build_denoiser, build_objective
from diffaug.checkpoint import checkpoint_metadata
from diffaug.config import to_dict
from diffaug.training.finetune import prepare_for_finetuning


def module_arguments(
    cfg: DictConfig, num_classes: int | None, class_names: Sequence[str], *, init_weights: bool = True
) -> dict[str, Any]:
    """``DiffusionModule``'s keyword arguments for a run. ``init_weights=False`` skips ``training.init_from``
    (a resume, whose checkpoint brings the weights), but still applies LoRA so the parameter names match."""
    t = cfg.training
    autoencoder = build_autoencoder(cfg)  # before the metadata: it records the autoencoder's hash in cfg
    denoiser = build_denoiser(cfg, num_classes)
    prepare_for_finetuning(
        denoiser,
        init_from=t.init_from if init_weights else None,
        class_names=list(class_names),
        freeze=list(t.freeze),
        lora_rank=t.lora_rank,
        class_init=dict(t.class_init),
        new_class_rows=t.new_class_rows,
        autoencoder_sha256=cfg.model.autoencoder_sha256,
    )
    return dict(
        denoiser=denoiser,
        objective=build_objective(cfg, denoiser.process),
        label_dropout=cfg.objective.label_dropout,
        lr=t.lr,
        weight_decay=t.weight_decay,
        betas=tuple(t.betas),
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps,
        lr_schedule=t.lr_schedule,
        min_lr_ratio=t.min_lr_ratio,
        ema_halflife_kimg=t.ema_halflife_kimg,
        ema_rampup=t.ema_rampup,
        on_nonfinite=t.on_nonfinite,
        seed=t.seed,
        compile=t.compile,
        metadata=checkpoint_metadata(to_dict(cfg), list(class_names)),
        autoencoder=autoencoder,
        latent_inputs="moments" if autoencoder is not None and cfg.model.latent_cache else "pixels",
    )
