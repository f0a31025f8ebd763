"""Export a labelled synthetic augmentation set: deterministic, distributed, resumable.

The set's layout is :mod:`diffaug.augset.layout`. While the export runs, ``.export/`` holds the plan and one
record log per part. Each part writes PNGs under ``images/`` (atomically), then appends their records; an
item counts as done only when both exist. When every item is done, one process finalises (see
:mod:`diffaug.augset.finalize`). Rerunning the same command resumes or, on a finished set, does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from diffaug.augset.files import atomic_write_bytes, atomic_write_json, fsync_dir, remove_temp_files
from diffaug.augset.finalize import (
    ExportSummary,
    cleanup_finished,
    exclusive,
    fill_from_card,
    is_done,
    try_finalize,
)
from diffaug.augset.images import encode_image
from diffaug.augset.layout import CARD_JSON, PLAN_JSON, WORK_DIR
from diffaug.augset.plan import ExportPlan, WorkItem, items_of_part
from diffaug.augset.records import RecordLog, log_path, read_records
from diffaug.config import ConfigError
from diffaug.data.transforms import to_model_range
from diffaug.sampling.curation import ClassifierFilter, NearDuplicateFilter
from diffaug.sampling.generate import draw
from diffaug.sampling.ranks import Partition
from diffaug.sampling.settings import SampleSettings

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- running one part


def _chunks(items: Sequence[WorkItem], size: int) -> Iterator[Sequence[WorkItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_sources(
    paths: Sequence[str],
    transform: Callable[[Image.Image], Tensor],
    pixels: Mapping[str, Tensor] | None = None,
) -> Tensor:
    images = []
    for path in paths:
        if pixels is not None and path in pixels:  # an image held in memory (the training data), by id
            images.append(pixels[path])
            continue
        try:
            with Image.open(path) as image:
                image.load()
                images.append(transform(image))  # (C, H, W) in [-1, 1]
        except OSError as error:
            raise ConfigError(f"cannot read source image {path}: {error}") from None
    return torch.stack(images)  # (N, C, H, W)


def _device_mismatch(out_dir: Path, made_on: str | None, plan: ExportPlan) -> ConfigError | None:
    if made_on is None or made_on == plan.device_type:
        return None
    return ConfigError(
        f"{out_dir} holds an export sampled on {made_on}; this process samples on {plan.device_type}. "
        "Devices of different types draw different random numbers from the same seeds and round "
        f"differently, so the parts would not make one reproducible set: run every part on {made_on} "
        "(sampling.device), or choose another export.out_dir"
    )


def _check_or_write_plan(out_dir: Path, plan: ExportPlan, info: Mapping[str, Any], tag: str) -> None:
    """Refuse to mix two different sets in one folder; record the plan for resuming and finalising."""
    card = out_dir / CARD_JSON
    if card.exists():
        finished = json.loads(card.read_text())
        existing = finished["config_hash"]
        mismatch = _device_mismatch(out_dir, finished.get("sampling", {}).get("device_type"), plan)
        if existing != plan.config_hash and mismatch is not None:
            raise mismatch
        if existing != plan.config_hash:
            raise ConfigError(
                f"{out_dir} already holds a finished export made with other settings (config hash "
                f"{existing[:12]}, now {plan.config_hash[:12]}); choose another export.out_dir"
            )
        return
    path = out_dir / WORK_DIR / PLAN_JSON
    if path.exists():
        saved = json.loads(path.read_text())["plan"]
        mismatch = _device_mismatch(out_dir, saved.get("device_type"), plan)
        if mismatch is not None:
            raise mismatch
        if saved != plan.to_dict():
            changed = sorted(
                k for k in set(saved) | set(plan.to_dict()) if saved.get(k) != plan.to_dict().get(k)
            )
            raise ConfigError(
                f"{out_dir} holds an unfinished export made with other settings (differences in: "
                f"{', '.join(changed)}); rerun with the original settings to resume it, or choose another "
                "export.out_dir"
            )
        return
    if any(out_dir.iterdir()):  # someone's data, or an export from an older layout: never mix into it
        raise ConfigError(
            f"export.out_dir {out_dir} is not empty and holds no export of diffaug; choose a new or empty folder"
        )
    atomic_write_json(
        path, {"plan": plan.to_dict(), "config_hash": plan.config_hash, "info": dict(info)}, tag=tag
    )


def run_export(
    plan: ExportPlan,
    *,
    denoiser: Callable[..., Tensor],
    process: Any,
    out_dir: str | Path,
    partition: Partition | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    info: Mapping[str, Any] | None = None,
    classifier_filter: ClassifierFilter | None = None,
    duplicate_filter: NearDuplicateFilter | None = None,
    source_transform: Callable[[Image.Image], Tensor] | None = None,
    source_pixels: Mapping[str, Tensor] | None = None,
    finalize: bool = True,
    progress: bool = True,
    autoencoder: Any = None,
) -> ExportSummary:
    """Make this process's part of ``plan`` under ``out_dir`` (skipping finished items), then finalise
    the set if every part is done (``finalize=False``: never; ``finalize_export`` does it later).

    ``info`` (checkpoint path, sizing mode, full config...) goes into the dataset card and does not
    change the images. ``source_pixels`` holds (C, H, W) images in [-1, 1] for source ids that are not
    files (``export.source_images=train``); other sources are read with ``source_transform``.
    """
    if batch_size < 1:
        raise ConfigError(f"invalid value for config key 'sampling.batch_size': {batch_size}; must be >= 1")
    if bool(plan.curation.get("classifier")) != (classifier_filter is not None):
        raise ValueError("the plan's curation settings and the classifier filter given disagree")
    if ("dedup_threshold" in plan.curation) != (duplicate_filter is not None):
        raise ValueError("the plan's curation settings and the near-duplicate filter given disagree")
    if (autoencoder is None) != (plan.autoencoder_sha256 is None) or (
            autoencoder is not None and autoencoder.sha256 != plan.autoencoder_sha256):
        raise ValueError("the plan's autoencoder hash and the autoencoder given disagree")
    if plan.sources is not None and source_transform is None:
        raise ValueError("an image-conditioned plan needs source_transform to load its source images")
    partition = partition or Partition(0, 1)
    device = torch.device(device)
    if device.type != plan.device_type:
        raise ValueError(f"the plan is for sampling on {plan.device_type}, run_export was given {device}")
    out_dir = Path(out_dir)
    work_dir = out_dir / WORK_DIR
    tag = partition.tag
    info = dict(info or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):  # not while another process finalises and removes the work folder
        _check_or_write_plan(out_dir, plan, info, tag)

    summary = ExportSummary(
        out_dir,
        partition.rank,
        partition.world_size,
        plan.config_hash,
        plan.class_names,
        dict(zip(plan.class_names, plan.quotas, strict=True)),
    )
    if (out_dir / CARD_JSON).exists():
        log.info("%s already holds this finished export; nothing to do", out_dir)
        if partition.rank == 0:
            with exclusive(out_dir):
                cleanup_finished(out_dir, plan)
        return fill_from_card(summary, out_dir)

    # Files a killed predecessor of this part was writing; other parts' files may be live, leave them.
    removed = remove_temp_files(out_dir, tag)
    if removed:
        log.info("removed %d temporary files left by an interrupted run of part %d", removed, partition.rank)
    records = read_records(work_dir)
    mine = items_of_part(plan.items(), partition.rank, partition.world_size)
    pending = [it for it in mine if not is_done(plan, out_dir, it, records.get((it.class_index, it.index)))]
    summary.resumed = len(mine) - len(pending)
    log.info(
        "part %d of %d: %d images, %d already done, %d to generate",
        partition.rank,
        partition.world_size,
        len(mine),
        summary.resumed,
        len(pending),
    )
    for filt in (classifier_filter, duplicate_filter):
        if filt is not None:
            filt.to(device)

    # The plan's sampling settings; the seed and guidance are in each item already.
    settings = SampleSettings(sampler=plan.sampler, steps=plan.steps, seed=plan.seed,
                              sampler_args=plan.sampler_args, precision=plan.precision,
                              microbatch=plan.microbatch, batch_size=batch_size)
    start = time.perf_counter()
    with (
        RecordLog(log_path(work_dir, tag)) as record_log,
        tqdm(
            total=len(mine),
            initial=summary.resumed,
            unit="img",
            disable=not progress or not pending,
            desc=f"export part {partition.rank + 1}/{partition.world_size}",
            dynamic_ncols=True,
        ) as bar,
    ):
        for batch in _chunks(pending, batch_size):
            x_start = None
            if plan.sources is not None:
                assert source_transform is not None
                paths = [it.source for it in batch]
                x_start = _load_sources(paths, source_transform, source_pixels)  # (N, C, H, W)
            images = draw(denoiser, process, batch, settings=settings, device=device, shape=plan.image_shape,
                          x_start=x_start, strength=plan.strength, autoencoder=autoencoder)  # (N, C, H, W) uint8
            record_log.append(
                _save_batch(plan, out_dir, batch, images, tag, device, classifier_filter, duplicate_filter)
            )
            summary.generated += len(batch)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - start

    if partition.uses_torch_distributed and dist.is_initialized():
        dist.barrier()  # every part done: rank 0 finalises while the others wait
        error: BaseException | None = None
        if finalize and dist.get_rank() == 0:
            try:
                try_finalize(out_dir, summary)
            except BaseException as caught:  # still reach the barrier, or the other ranks wait forever
                error = caught
        dist.barrier()
        if error is not None:
            raise error
        if not summary.finalized and (out_dir / CARD_JSON).exists():
            fill_from_card(summary, out_dir)
    elif finalize:
        try_finalize(out_dir, summary)
    return summary


def _save_batch(
    plan: ExportPlan,
    out_dir: Path,
    batch: Sequence[WorkItem],
    images: Tensor,
    tag: str,
    device: torch.device,
    classifier_filter: ClassifierFilter | None,
    duplicate_filter: NearDuplicateFilter | None,
) -> list[dict[str, Any]]:
    """Apply curation, write the kept PNGs atomically, and return the batch's records."""
    saved = to_model_range(images).to(device)  # (N, C, H, W): exactly what is written, back in [-1, 1]
    labels = torch.tensor([it.class_index for it in batch], dtype=torch.int64, device=device)
    verdict = classifier_filter(saved, labels) if classifier_filter is not None else None
    distance = duplicate_filter.nearest_distance(saved) if duplicate_filter is not None else None
    records, folders = [], set()
    for n, item in enumerate(batch):
        record: dict[str, Any] = {
            "class_index": item.class_index,
            "index": item.index,
            "seed": item.seed,
            "kept": True,
            "dropped_by": None,
        }
        if verdict is not None:
            record["classifier_confidence"] = round(float(verdict.confidence[n]), 4)
            if not bool(verdict.keep[n]):
                record.update(kept=False, dropped_by="classifier")
        if distance is not None:
            assert duplicate_filter is not None
            record["nn_distance"] = round(float(distance[n]), 4)
            record["near_duplicate"] = bool(duplicate_filter.is_duplicate(distance[n]))
            if record["near_duplicate"] and duplicate_filter.action == "drop" and record["kept"]:
                record.update(kept=False, dropped_by="near_duplicate")
        if record["kept"]:
            data = encode_image(images[n])
            path = out_dir / plan.image_path(item)
            atomic_write_bytes(path, data, tag=tag, sync_dir=False)
            folders.add(path.parent)
            record["png_sha256"] = hashlib.sha256(data).hexdigest()
        records.append(record)
    for folder in folders:  # the renames are durable before the records that vouch for them
        fsync_dir(folder)
    return records
