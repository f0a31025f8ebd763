"""``diffaug export``: a checkpoint and its config's ``export.*`` / ``sampling.*`` settings turned into an
export plan, the curation filters and the dataset card's facts, then run by :func:`run_export`.

The model, data and class names come from the config stored in the checkpoint; the user overrides only
the sampling and export settings (see :mod:`diffaug.sampling.model`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig
from torch import Tensor

from diffaug import tracking
from diffaug.augset.files import file_sha256
from diffaug.augset.finalize import ExportSummary
from diffaug.augset.names import sanitize_class_names
from diffaug.augset.plan import TRAINING_SOURCES, ExportPlan
from diffaug.config import ConfigError, to_dict
from diffaug.data import ClassMap, FolderSource, ImageTransform
from diffaug.sampling.curation import ClassifierFilter, NearDuplicateFilter, load_torchscript
from diffaug.sampling.export import run_export
from diffaug.sampling.generate import effective_precision, image_shape
from diffaug.sampling.model import load_model
from diffaug.sampling.quotas import check_quota_mode, compute_quotas
from diffaug.sampling.ranks import init_distributed_if_launched, resolve_partition
from diffaug.sampling.realdata import (
    folder_images,
    real_class_counts,
    reference_images,
    training_images_by_class,
)

log = logging.getLogger(__name__)

# Settings that cannot change the images; left out of the dataset card so equal sets have equal cards.
RUNTIME_KEYS = (("sampling", "batch_size"), ("sampling", "device"), ("export", "out_dir"), ("logging", None))


def _training_sources(
    cfg: DictConfig, class_map: ClassMap
) -> tuple[tuple[tuple[str, ...], ...], dict[str, Tensor]]:
    """Per class: ids ``train:<class folder>/<n>`` of the checkpoint's training images, and their pixels."""
    if Path(TRAINING_SOURCES).is_dir():
        raise ConfigError(
            f"export.source_images={TRAINING_SOURCES} names the checkpoint's training images, but a folder "
            f"./{TRAINING_SOURCES} exists here too; write ./{TRAINING_SOURCES} (or an absolute path) for the folder"
        )
    folders = sanitize_class_names(class_map.names)
    ids: list[tuple[str, ...]] = []
    pixels: dict[str, Tensor] = {}
    for folder, images in zip(folders, training_images_by_class(to_dict(cfg)["data"], class_map), strict=True):
        names = tuple(f"{TRAINING_SOURCES}:{folder}/{n:06d}" for n in range(len(images)))
        pixels.update(zip(names, images, strict=True))
        ids.append(names)
    return tuple(ids), pixels


def _source_images(root: str, class_map: ClassMap) -> tuple[tuple[str, ...], ...]:
    """Per checkpoint class: the sorted image paths of its sub-folder of ``root`` (empty if none)."""
    folder = FolderSource(path=root)
    unknown = [name for name in folder.class_map.names if name not in class_map.names]
    if unknown:
        raise ConfigError(
            f"export.source_images {root} has class folders {unknown} that the checkpoint does not "
            f"know; its classes are {list(class_map.names)}"
        )
    per_class: list[list[str]] = [[] for _ in class_map.names]
    for path, label in zip(folder.paths, folder.targets.tolist(), strict=True):
        per_class[class_map.index(folder.class_map.name(label))].append(str(path))
    return tuple(tuple(sorted(paths)) for paths in per_class)


def _card_config(cfg: DictConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    for section, key in RUNTIME_KEYS:
        if key is None:
            data.pop(section, None)
        else:
            data.get(section, {}).pop(key, None)
    return data


def _callable_id(fn: Callable) -> str:
    return f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _quotas(
    cfg: DictConfig,
    class_map: ClassMap,
    sources: tuple[tuple[str, ...], ...] | None,
    real_counts: Mapping[str, int] | None,
) -> tuple[dict[str, int], str]:
    """Images per class, and how the sizing was decided (for the dataset card)."""
    e = cfg.export
    real_from = "given"
    if e.per_class is None and real_counts is None:
        if sources is not None:
            real_counts = {n: len(p) for n, p in zip(class_map.names, sources, strict=True)}
            real_from = "source images"
        else:
            real_counts, real_from = real_class_counts(to_dict(cfg)["data"], class_map), "training data"
    quotas = compute_quotas(
        class_map.names,
        per_class=e.per_class,
        multiple=e.multiple,
        balance=e.balance,
        real_counts=real_counts,
    )
    if e.per_class is not None:
        mode = f"{e.per_class} images per class"
    elif e.multiple is not None:
        mode = f"{e.multiple} x the real class counts ({real_from})"
    else:
        mode = f"balanced: every class topped up to the largest real class ({real_from})"
    return quotas, mode


def _curation(
    cfg: DictConfig,
    class_map: ClassMap,
    classifier: Callable[[Tensor], Tensor] | None,
    dedup_features: Callable[[Tensor], Tensor] | None,
) -> tuple[dict[str, Any], ClassifierFilter | None, NearDuplicateFilter | None]:
    """The curation settings that identify the set, and the filters that apply them (None when off)."""
    e, rows = cfg.export, int(cfg.sampling.microbatch)
    settings: dict[str, Any] = {}
    classifier_filter = duplicate_filter = None
    if classifier is not None or e.classifier:
        if classifier is None:
            classifier = load_torchscript(e.classifier, "export.classifier")
            settings["classifier"] = file_sha256(e.classifier)
        else:
            settings["classifier"] = _callable_id(classifier)
        settings["min_confidence"] = float(e.min_confidence)
        classifier_filter = ClassifierFilter(
            classifier, min_confidence=float(e.min_confidence), num_classes=len(class_map), rows=rows
        )
    if e.dedup_threshold is not None:
        if dedup_features is not None:
            settings["dedup_features"] = _callable_id(dedup_features)
        elif e.dedup_features:
            dedup_features = load_torchscript(e.dedup_features, "export.dedup_features")
            settings["dedup_features"] = file_sha256(e.dedup_features)
        else:
            settings["dedup_features"] = "pixels"
        if e.dedup_reference:
            size = int(cfg.data.resolution)
            reference = folder_images(e.dedup_reference, resolution=size, channels=int(cfg.data.channels))
        else:
            reference = reference_images(to_dict(cfg)["data"], class_map)
        settings.update(
            dedup_threshold=float(e.dedup_threshold),
            dedup_action=e.dedup_action,
            dedup_reference=e.dedup_reference or "training data",
            dedup_reference_images=len(reference),
        )
        duplicate_filter = NearDuplicateFilter(
            reference,
            threshold=float(e.dedup_threshold),
            action=e.dedup_action,
            features=dedup_features,
            rows=rows,
        )
    return settings, classifier_filter, duplicate_filter


def export_augmentation_set(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    *,
    rank: int | None = None,
    world_size: int | None = None,
    finalize: bool = True,
    progress: bool | None = None,
    device: str | None = None,
    classifier: Callable[[Tensor], Tensor] | None = None,
    dedup_features: Callable[[Tensor], Tensor] | None = None,
    real_counts: Mapping[str, int] | None = None,
) -> ExportSummary:
    """Export a labelled synthetic set from ``checkpoint`` as the ``export.*``/``sampling.*`` settings say.

    ``rank``/``world_size`` pick this process's part (default: torch.distributed, then a SLURM array, else
    everything). ``finalize=False`` leaves the manifests, shards and card to
    :func:`diffaug.augset.finalize_export`.
    ``classifier`` / ``dedup_features`` are callables used instead of the TorchScript files named by
    ``export.classifier`` / ``export.dedup_features``; ``real_counts`` (class name -> training images)
    replaces counting the training data for ``export.multiple`` / ``export.balance``.
    """
    model = load_model(checkpoint, overrides, device=device)
    cfg, class_map, settings = model.cfg, model.class_map, model.settings
    e = cfg.export
    check_quota_mode(per_class=e.per_class, multiple=e.multiple, balance=e.balance)  # before reading data
    partition = resolve_partition(rank, world_size)
    joined = init_distributed_if_launched(partition)
    try:
        sources, source_pixels = None, None
        if e.source_images == TRAINING_SOURCES:
            sources, source_pixels = _training_sources(cfg, class_map)
        elif e.source_images:
            sources = _source_images(e.source_images, class_map)
        quotas, quota_mode = _quotas(cfg, class_map, sources, real_counts)
        curation, classifier_filter, duplicate_filter = _curation(cfg, class_map, classifier, dedup_features)
        plan = ExportPlan(
            class_names=tuple(class_map.names),
            class_dirs=sanitize_class_names(class_map.names),
            quotas=tuple(quotas[name] for name in class_map.names),
            guidance=tuple(settings.guidance(class_map.names)),
            sampler=settings.sampler,
            steps=settings.steps,
            seed=settings.seed,
            image_shape=image_shape(model.denoiser, model.autoencoder),
            checkpoint_sha256=model.checkpoint_sha256,
            sampler_args=dict(settings.sampler_args),
            precision=effective_precision(model.device, settings.precision),
            microbatch=settings.microbatch,
            device_type=model.device.type,
            formats=tuple(e.formats),
            shard_size=int(e.shard_size),
            strength=float(e.strength) if sources is not None else None,
            sources=sources,
            curation=curation,
            random_guidance=settings.random_guidance,
            autoencoder_sha256=None if model.autoencoder is None else model.autoencoder.sha256,
        )
        info = {
            "checkpoint": str(checkpoint),
            "quota_mode": quota_mode,
            "source_images": e.source_images,
            "guidance_scale": settings.guidance_scale,
            "class_guidance": dict(settings.class_guidance),
            "config": _card_config(cfg),
        }
        if model.autoencoder is not None:
            info["autoencoder"] = str(cfg.model.autoencoder)
        transform = ImageTransform(resolution=int(cfg.data.resolution), channels=int(cfg.data.channels))
        summary = run_export(
            plan,
            denoiser=model.denoiser,
            process=model.process,
            out_dir=Path(e.out_dir) if e.out_dir else Path(cfg.run_dir) / "export",
            partition=partition,
            batch_size=settings.batch_size,
            device=model.device,
            info=info,
            classifier_filter=classifier_filter,
            duplicate_filter=duplicate_filter,
            source_transform=transform if sources is not None else None,
            source_pixels=source_pixels,
            finalize=finalize,
            progress=bool(cfg.logging.progress_bar) if progress is None else progress,
            autoencoder=model.autoencoder,
        )
        if summary.finalized and tracking.enabled(cfg):  # the process that finished the set logs it
            tracking.log_export(cfg, model.checkpoint, summary.out_dir)
        return summary
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
