"""The manifest of an augmentation set: one row per kept image, as ``manifest.csv`` and ``manifest.jsonl``.

A row names the image's file (or shard and key), its class, and everything that made it: seed, sampler,
guidance, source image, checkpoint and config hash, PNG hash, and the curation scores.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffaug.augset.files import atomic_write_text
from diffaug.augset.layout import MANIFEST_CSV, MANIFEST_JSONL, SHARDS_DIR
from diffaug.augset.plan import ExportPlan, WorkItem

MANIFEST_COLUMNS = (
    "path",
    "shard",
    "key",
    "class_index",
    "class_name",
    "index",
    "seed",
    "sampler",
    "steps",
    "guidance",
    "strength",
    "source_image",
    "checkpoint_sha256",
    "config_hash",
    "png_sha256",
    "classifier_confidence",
    "nn_distance",
    "near_duplicate",
    "autoencoder_sha256",
)



def manifest_row(
    plan: ExportPlan, item: WorkItem, record: Mapping[str, Any], shard: str | None
) -> dict[str, Any]:
    """The row of ``item``, from its plan, its record (PNG hash, curation scores) and its shard (if any)."""
    return {
        "path": plan.image_path(item) if "folder" in plan.formats else None,
        "shard": None if shard is None else f"{SHARDS_DIR}/{shard}",
        "key": item.key if shard is not None else None,
        "class_index": item.class_index,
        "class_name": plan.class_names[item.class_index],
        "index": item.index,
        "seed": item.seed,
        "sampler": plan.sampler,
        "steps": plan.steps,
        "guidance": item.guidance,
        "strength": plan.strength,
        "source_image": item.source,
        "checkpoint_sha256": plan.checkpoint_sha256,
        "config_hash": plan.config_hash,
        "png_sha256": record["png_sha256"],
        "classifier_confidence": record.get("classifier_confidence"),
        "nn_distance": record.get("nn_distance"),
        "near_duplicate": record.get("near_duplicate"),
        "autoencoder_sha256": plan.autoencoder_sha256,
    }


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_manifests(rows: Sequence[dict[str, Any]], out_dir: Path, *, tag: str) -> tuple[Path, Path]:
    """``manifest.csv`` and ``manifest.jsonl``: one row per image, in the order given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in MANIFEST_COLUMNS])
    csv_path = atomic_write_text(out_dir / MANIFEST_CSV, buffer.getvalue(), tag=tag)
    jsonl = "".join(
        json.dumps({c: row.get(c) for c in MANIFEST_COLUMNS}, ensure_ascii=False, separators=(",", ":"))
        + "\n"
        for row in rows
    )
    jsonl_path = atomic_write_text(out_dir / MANIFEST_JSONL, jsonl, tag=tag)
    return csv_path, jsonl_path
