"""Entry points: load a checkpoint with its own config, write a preview grid, export an augmentation set.

The user gives a checkpoint and ``key=value`` overrides of the sampling and export settings; the model,
data and class names come from the config stored in the checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from diffaug import tracking
from diffaug.build import sampler_options
from diffaug.config import ConfigError, to_dict
from diffaug.config.load import parse_overrides, validate
from diffaug.data import ClassMap, FolderSource, ImageTransform
from diffaug.progress import progress
from diffaug.sampling.atomic import atomic_write_bytes
from diffaug.sampling.curation import ClassifierFilter, NearDuplicateFilter, load_torchscript
from diffaug.sampling.export import run_export
from diffaug.sampling.finalize import ExportSummary
from diffaug.sampling.generate import effective_precision, generate_images, resolve_device
from diffaug.sampling.names import sanitize_class_names
from diffaug.sampling.plan import ExportPlan, build_items, resolve_guidance
from diffaug.sampling.quotas import check_quota_mode, compute_quotas
from diffaug.sampling.ranks import init_distributed_if_launched, resolve_partition
from diffaug.sampling.realdata import folder_images, real_class_counts, reference_images
from diffaug.sampling.writers import encode_png

log = logging.getLogger(__name__)

# What may change between training and sampling: how to sample and export, and where the data now lives.
OVERRIDABLE_SECTIONS = ("sampling", "export", "logging")
OVERRIDABLE_KEYS = ("data.path", "data.val_path", "data.num_workers")
# Settings that cannot change the images; left out of the dataset card so equal sets have equal cards.
RUNTIME_KEYS = (("sampling", "batch_size"), ("sampling", "device"), ("export", "out_dir"), ("logging", None))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    denoiser: torch.nn.Module
    process: Any
    cfg: DictConfig  # the checkpoint's config with the sampling/export overrides applied
    class_map: ClassMap
    checkpoint: Path
    checkpoint_sha256: str
    device: torch.device


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
    from diffaug.checkpoint import load_for_inference

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    _check_override_keys(overrides)
    use_ema = OmegaConf.select(parse_overrides(overrides), "sampling.use_ema", default=True)
    denoiser, process, saved_cfg, class_map = load_for_inference(
        path, use_ema=bool(use_ema), map_location="cpu"
    )
    cfg = apply_overrides(saved_cfg, overrides)
    target = resolve_device(device or cfg.sampling.device)
    denoiser = denoiser.to(target).eval()
    return LoadedModel(denoiser, process, cfg, class_map, path, file_sha256(path), target)


def _image_shape(cfg: DictConfig) -> tuple[int, int, int]:
    return (int(cfg.data.channels), int(cfg.data.resolution), int(cfg.data.resolution))


def _guidance(model: LoadedModel) -> list[float]:
    s = model.cfg.sampling
    return resolve_guidance(model.class_map.names, float(s.guidance_scale), dict(s.class_guidance))


# ---------------------------------------------------------------- preview grid


def tile(images: Tensor, rows: int, cols: int, *, pad: int = 2, pad_value: int = 255) -> Tensor:
    """(rows * cols, C, H, W) uint8 -> (C, rows (H + pad) + pad, cols (W + pad) + pad) uint8, row-major."""
    n, c, h, w = images.shape
    if n != rows * cols:
        raise ValueError(f"tile needs rows * cols = {rows * cols} images, got {n}")
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), pad_value, dtype=torch.uint8)
    for k in range(n):
        r, col = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def sample_grid(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    per_class: int = 8,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> Path:
    """A PNG with one row per class and ``per_class`` samples each; returns its path.

    Cell (c, i) uses the seed of image i of class c in an export with the same settings, so the grid
    previews exactly the first images of that export. Default path: ``<checkpoint stem>_samples.png``
    next to the checkpoint.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    model = load_model(checkpoint, overrides, device=device)
    s = model.cfg.sampling
    items = build_items([per_class] * len(model.class_map), base_seed=int(s.seed), guidance=_guidance(model))
    batches = [
        generate_images(
            model.denoiser,
            model.process,
            items[i : i + s.batch_size],
            image_shape=_image_shape(model.cfg),
            sampler=s.sampler,
            steps=int(s.steps),
            sampler_args=sampler_options(model.cfg),
            device=model.device,
            precision=s.precision,
            microbatch=int(s.microbatch),
        )
        for i in progress(range(0, len(items), int(s.batch_size)), desc="sample grid", unit="batch",
                          enabled=bool(model.cfg.logging.progress_bar))
    ]
    grid = tile(torch.cat(batches), len(model.class_map), per_class)  # (C, H', W')
    path = (
        Path(out) if out is not None else model.checkpoint.with_name(f"{model.checkpoint.stem}_samples.png")
    )
    atomic_write_bytes(path, encode_png(grid))
    log.info("wrote a %d x %d sample grid to %s", len(model.class_map), per_class, path)
    if tracking.enabled(model.cfg):
        tracking.log_grid(model.cfg, model.checkpoint, path, model.class_map.names)
    return path


# ---------------------------------------------------------------- export


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
    everything). ``finalize=False`` leaves the manifests, shards and card to :func:`finalize_export`.
    ``classifier`` / ``dedup_features`` are callables used instead of the TorchScript files named by
    ``export.classifier`` / ``export.dedup_features``; ``real_counts`` (class name -> training images)
    replaces counting the training data for ``export.multiple`` / ``export.balance``.
    """
    model = load_model(checkpoint, overrides, device=device)
    cfg, class_map = model.cfg, model.class_map
    s, e = cfg.sampling, cfg.export
    check_quota_mode(per_class=e.per_class, multiple=e.multiple, balance=e.balance)  # before reading data
    partition = resolve_partition(rank, world_size)
    joined = init_distributed_if_launched(partition)
    try:
        sources = _source_images(e.source_images, class_map) if e.source_images else None
        quotas, quota_mode = _quotas(cfg, class_map, sources, real_counts)
        curation, classifier_filter, duplicate_filter = _curation(cfg, class_map, classifier, dedup_features)
        plan = ExportPlan(
            class_names=tuple(class_map.names),
            class_dirs=sanitize_class_names(class_map.names),
            quotas=tuple(quotas[name] for name in class_map.names),
            guidance=tuple(_guidance(model)),
            sampler=s.sampler,
            steps=int(s.steps),
            seed=int(s.seed),
            image_shape=_image_shape(cfg),
            checkpoint_sha256=model.checkpoint_sha256,
            sampler_args=sampler_options(cfg),
            precision=effective_precision(model.device, s.precision),
            microbatch=int(s.microbatch),
            device_type=model.device.type,
            formats=tuple(e.formats),
            shard_size=int(e.shard_size),
            strength=float(e.strength) if sources is not None else None,
            sources=sources,
            curation=curation,
        )
        info = {
            "checkpoint": str(checkpoint),
            "quota_mode": quota_mode,
            "source_images": e.source_images,
            "guidance_scale": float(s.guidance_scale),
            "class_guidance": dict(s.class_guidance),
            "config": _card_config(cfg),
        }
        transform = ImageTransform(resolution=int(cfg.data.resolution), channels=int(cfg.data.channels))
        summary = run_export(
            plan,
            denoiser=model.denoiser,
            process=model.process,
            out_dir=Path(e.out_dir) if e.out_dir else Path(cfg.run_dir) / "export",
            partition=partition,
            batch_size=int(s.batch_size),
            device=model.device,
            info=info,
            classifier_filter=classifier_filter,
            duplicate_filter=duplicate_filter,
            source_transform=transform if sources is not None else None,
            finalize=finalize,
            progress=bool(cfg.logging.progress_bar) if progress is None else progress,
        )
        if summary.finalized and tracking.enabled(cfg):  # the process that finished the set logs it
            tracking.log_export(cfg, model.checkpoint, summary.out_dir)
        return summary
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
