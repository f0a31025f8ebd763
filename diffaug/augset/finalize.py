"""Finishing an export: manifests, shards and the dataset card, once every part is done.

Finalisation reads every part's records, writes all derived files atomically (the dataset card last: its
presence marks the set complete), then removes the work folder. It is idempotent, so a kill at any point
of it is repaired by running it again; a lock on the output folder lets only one process do it at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffaug.augset.card import dataset_card, dataset_card_markdown
from diffaug.augset.files import atomic_write_json, atomic_write_text, remove_temp_files
from diffaug.augset.layout import (
    CARD_JSON,
    CARD_MD,
    CLASSES_JSON,
    IMAGES_DIR,
    PLAN_JSON,
    SHARDS_DIR,
    WORK_DIR,
    shard_name,
)
from diffaug.augset.manifest import manifest_row, write_manifests
from diffaug.augset.plan import ExportPlan, WorkItem
from diffaug.augset.records import read_records
from diffaug.augset.shards import write_shard_index, write_tar

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the summary


@dataclass
class ExportSummary:
    out_dir: Path
    rank: int
    world_size: int
    config_hash: str
    class_names: tuple[str, ...]
    planned: dict[str, int]
    generated: int = 0  # images this process generated in this run
    resumed: int = 0  # items of this process's part already done before this run
    seconds: float = 0.0
    finalized: bool = False
    pending: int = 0  # items (of any part) not yet done when this process finished
    kept: dict[str, int] = field(default_factory=dict)
    dropped_classifier: dict[str, int] = field(default_factory=dict)
    dropped_near_duplicate: dict[str, int] = field(default_factory=dict)
    flagged_near_duplicate: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"export {self.out_dir} (part {self.rank + 1} of {self.world_size}, "
            f"config hash {self.config_hash[:12]})",
            f"  generated {self.generated} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s); {self.resumed} were already done",
        ]
        if not self.finalized:
            lines.append(
                f"  not finalised yet: {self.pending} images of other parts are still missing; the last "
                "part to finish finalises, or run the same command again once all parts are done"
            )
            return "\n".join(lines)
        lines.append(
            f"  finished set: {sum(self.kept.values())} images"
            + (f" in {len(self.shards)} shards" if self.shards else "")
        )
        width = max(len(n) for n in self.class_names)
        for name in self.class_names:
            extra = []
            if self.dropped_classifier.get(name):
                extra.append(f"{self.dropped_classifier[name]} dropped by the classifier")
            if self.dropped_near_duplicate.get(name):
                extra.append(f"{self.dropped_near_duplicate[name]} dropped as near-duplicates")
            if self.flagged_near_duplicate.get(name):
                extra.append(f"{self.flagged_near_duplicate[name]} flagged as near-duplicates")
            lines.append(
                f"  {name:<{width}}  {self.kept.get(name, 0):>7} / {self.planned[name]}"
                + (f"  ({'; '.join(extra)})" if extra else "")
            )
        return "\n".join(lines)


# ---------------------------------------------------------------- progress and locking


def is_done(plan: ExportPlan, out_dir: Path, item: WorkItem, record: Mapping[str, Any] | None) -> bool:
    if record is None:
        return False
    return not record["kept"] or (out_dir / plan.image_path(item)).is_file()


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output folder (POSIX flock), so only one process finalises at a time."""
    try:
        import fcntl
    except ImportError:  # no flock: finalisation runs once per torch.distributed job anyway
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------- finalising the set


def _read_plan(out_dir: Path) -> tuple[ExportPlan, dict[str, Any]]:
    path = out_dir / WORK_DIR / PLAN_JSON
    if not path.exists():
        raise FileNotFoundError(f"{out_dir} holds no export in progress ({path} is missing)")
    data = json.loads(path.read_text())
    return ExportPlan.from_dict(data["plan"]), data.get("info", {})


def finalize_export(out_dir: str | Path) -> ExportSummary:
    """Write manifests, shards and the dataset card of a set whose parts are all done.

    For jobs whose parts cannot wait for each other (SLURM arrays, separate machines); raises if some
    images are still missing.
    """
    out_dir = Path(out_dir)
    if (out_dir / CARD_JSON).exists():
        plan, _ = _read_plan(out_dir) if (out_dir / WORK_DIR / PLAN_JSON).exists() else (None, None)
        card = json.loads((out_dir / CARD_JSON).read_text())
        if plan is not None:
            with exclusive(out_dir):
                cleanup_finished(out_dir, plan)
        summary = ExportSummary(
            out_dir,
            0,
            1,
            card["config_hash"],
            tuple(c["name"] for c in card["classes"]),
            {c["name"]: c["planned"] for c in card["classes"]},
        )
        return fill_from_card(summary, out_dir)
    plan, _ = _read_plan(out_dir)
    summary = ExportSummary(
        out_dir,
        0,
        1,
        plan.config_hash,
        plan.class_names,
        dict(zip(plan.class_names, plan.quotas, strict=True)),
    )
    try_finalize(out_dir, summary)
    if not summary.finalized:
        raise RuntimeError(
            f"cannot finalise {out_dir}: {summary.pending} images are still missing; run the "
            "missing parts (the same export command with their --rank) first"
        )
    return summary


def try_finalize(out_dir: Path, summary: ExportSummary) -> None:
    with exclusive(out_dir):
        if (out_dir / CARD_JSON).exists():  # another part finalised while this one waited for the lock
            fill_from_card(summary, out_dir)
            return
        plan, info = _read_plan(out_dir)
        records = read_records(out_dir / WORK_DIR)
        items = plan.items()
        missing = [
            it for it in items if not is_done(plan, out_dir, it, records.get((it.class_index, it.index)))
        ]
        summary.pending = len(missing)
        if missing:
            log.info(
                "%d images of other parts are not done yet; leaving finalisation to the last part",
                len(missing),
            )
            return
        remove_temp_files(out_dir)  # every part is done, so no temporary file is live any more
        _write_outputs(out_dir, plan, info, items, records)
        cleanup_finished(out_dir, plan)
        fill_from_card(summary, out_dir)
        log.info("finalised %s", out_dir)


def _shard_order_key(item: WorkItem) -> str:
    # Shards interleave classes in a fixed pseudo-random order, so a small shuffle buffer still mixes them.
    return hashlib.sha256(item.key.encode()).hexdigest()


def _write_outputs(
    out_dir: Path,
    plan: ExportPlan,
    info: Mapping[str, Any],
    items: list[WorkItem],
    records: Mapping[tuple[int, int], Mapping[str, Any]],
) -> None:
    tag = "final"
    kept = [it for it in items if records[(it.class_index, it.index)]["kept"]]
    shard_of: dict[tuple[int, int], str] = {}
    shard_counts: dict[str, int] = {}
    if "shards" in plan.formats:
        ordered = sorted(kept, key=_shard_order_key)
        for position, item in enumerate(ordered):
            name = shard_name(position // plan.shard_size)
            shard_of[(item.class_index, item.index)] = name
            shard_counts[name] = shard_counts.get(name, 0) + 1

    rows = [
        manifest_row(plan, it, records[(it.class_index, it.index)], shard_of.get((it.class_index, it.index)))
        for it in kept
    ]  # items are ordered by (class, index)
    if "shards" in plan.formats:
        _write_shards(out_dir, plan, rows, kept, shard_counts, tag)
    write_manifests(rows, out_dir, tag=tag)
    atomic_write_json(out_dir / CLASSES_JSON, {"names": list(plan.class_names)}, tag=tag)
    card = dataset_card(plan, info, items, records, shard_counts)
    atomic_write_text(out_dir / CARD_MD, dataset_card_markdown(card), tag=tag)
    atomic_write_json(out_dir / CARD_JSON, card, tag=tag)  # last: its presence marks the set complete


def _write_shards(
    out_dir: Path,
    plan: ExportPlan,
    rows: list[dict[str, Any]],
    kept: list[WorkItem],
    shard_counts: dict[str, int],
    tag: str,
) -> None:
    shard_dir = out_dir / SHARDS_DIR
    by_shard: dict[str, list[tuple[WorkItem, dict[str, Any]]]] = {name: [] for name in shard_counts}
    for item, row in sorted(zip(kept, rows, strict=True), key=lambda pair: _shard_order_key(pair[0])):
        by_shard[Path(row["shard"]).name].append((item, row))
    for name, members in by_shard.items():
        write_tar(shard_dir / name, _shard_samples(out_dir, plan, members), tag=tag)
    write_shard_index(shard_dir, plan.class_names, shard_counts, tag=tag)


def _shard_samples(
    out_dir: Path, plan: ExportPlan, members: list[tuple[WorkItem, dict[str, Any]]]
) -> Iterator[dict[str, Any]]:
    """The samples of one shard: <key>.png, <key>.cls (class index), <key>.json (manifest row)."""
    for item, row in members:
        png = (out_dir / plan.image_path(item)).read_bytes()
        if hashlib.sha256(png).hexdigest() != row["png_sha256"]:
            raise RuntimeError(
                f"{out_dir / plan.image_path(item)} changed after it was recorded; "
                "delete it and rerun the export to regenerate it"
            )
        meta = {k: v for k, v in row.items() if k not in ("path", "shard")}
        yield {
            "__key__": item.key,
            "png": png,
            "cls": str(item.class_index).encode(),
            "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode(),
        }


def cleanup_finished(out_dir: Path, plan: ExportPlan) -> None:
    """Remove working files of a finished set (idempotent: safe to repeat after a kill)."""
    remove_temp_files(out_dir)
    if "folder" not in plan.formats:
        shutil.rmtree(out_dir / IMAGES_DIR, ignore_errors=True)
    shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)


def fill_from_card(summary: ExportSummary, out_dir: Path) -> ExportSummary:
    card = json.loads((out_dir / CARD_JSON).read_text())
    summary.finalized = True
    summary.pending = 0
    for c in card["classes"]:
        summary.kept[c["name"]] = c["kept"]
        summary.dropped_classifier[c["name"]] = c["dropped_classifier"]
        summary.dropped_near_duplicate[c["name"]] = c["dropped_near_duplicate"]
        summary.flagged_near_duplicate[c["name"]] = c["flagged_near_duplicate"]
    summary.shards = [s["name"] for s in card["shards"]]
    return summary
