"""Byte-reproducible output files: PNGs, webdataset tar shards, manifests and the dataset card.

Nothing here writes a timestamp, a user name or a random name into a file, so the same set written
twice gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from torch import Tensor

from diffaug.data.shards import CLASSES_FILE, MANIFEST_FILE
from diffaug.sampling.atomic import atomic_file, atomic_write_json, atomic_write_text

_PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}

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
)


def encode_png(image: Tensor) -> bytes:
    """(C, H, W) uint8 tensor -> PNG bytes (no metadata, fixed compression)."""
    if image.ndim != 3 or image.shape[0] not in _PNG_MODES:
        raise ValueError(f"expected a (C, H, W) image with C in 1..4, got shape {tuple(image.shape)}")
    array = image.detach().cpu().numpy()
    array = array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(array, mode=_PNG_MODES[image.shape[0]]).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed: equal sets give byte-equal shards
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_tar_atomic(path: Path, members: Iterable[tuple[str, bytes]], *, tag: str) -> None:
    """A tar file of (name, bytes) members in the given order, written to a temp name then renamed."""
    with atomic_file(path, tag=tag) as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                tar.addfile(*_tar_member(name, data))


def write_shard_index(
    shard_dir: Path, class_names: Sequence[str], counts: Mapping[str, int], *, tag: str
) -> None:
    """The files the data module reads beside shards: ``classes.json`` (ClassMap JSON) and ``shards.json``
    (shard file name -> samples), against which it checks each shard, catching the silent loss that a
    damaged tar header causes."""
    atomic_write_json(shard_dir / CLASSES_FILE, {"names": list(class_names)}, tag=tag)
    atomic_write_json(shard_dir / MANIFEST_FILE, dict(sorted(counts.items())), tag=tag)


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
    csv_path = atomic_write_text(out_dir / "manifest.csv", buffer.getvalue(), tag=tag)
    jsonl = "".join(
        json.dumps({c: row.get(c) for c in MANIFEST_COLUMNS}, ensure_ascii=False, separators=(",", ":"))
        + "\n"
        for row in rows
    )
    jsonl_path = atomic_write_text(out_dir / "manifest.jsonl", jsonl, tag=tag)
    return csv_path, jsonl_path


def _size_category(n: int) -> str:
    """Hugging Face's size_categories bucket for n examples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def dataset_card_metadata(card: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter, in the Hugging Face dataset-card schema: license, task, size, how the files
    load (``load_dataset("imagefolder", data_dir=export_dir)``, or ``load_dataset(export_dir)`` with the card
    copied to README.md) and the label names; diffaug's provenance under ``diffaug``."""
    folder = "folder" in card["formats"]
    s = card["sampling"]
    return {
        "license": ((card.get("config") or {}).get("export") or {}).get("license", "unknown"),
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "diffusion", "data-augmentation"],
        "size_categories": [_size_category(card["num_images"])],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "images/**" if folder else "shards/*.tar"}]}],
        # The folder names label the images, numbered as datasets' imagefolder numbers them: in sorted order,
        # which need not be diffaug's class index (the manifest's class_index; diffaug.class_names below).
        "dataset_info": {
            "features": [{"name": "image", "dtype": "image"},
                         {"name": "label", "dtype": {"class_label": {"names": {
                             str(i): name for i, name in enumerate(sorted(c["folder"] for c in card["classes"]))
                         }}}}],
        },
        "diffaug": {
            "class_names": [c["name"] for c in card["classes"]],
            "checkpoint_sha256": card["checkpoint_sha256"],
            "config_hash": card["config_hash"],
            "sampler": s["sampler"], "steps": s["steps"], "seed": s["seed"], "guidance_scale": s["guidance_scale"],
        },
    }


def dataset_card_markdown(card: dict[str, Any]) -> str:
    """The dataset card as Markdown: what the set is, how it was made, and counts per class, after the
    Hugging Face metadata block (:func:`dataset_card_metadata`)."""
    s = card["sampling"]
    conditioned = "no"
    if card["source_images"]:
        conditioned = f"yes, SDEdit strength {card['strength']} from {card['source_images']}"
    front = yaml.safe_dump(dataset_card_metadata(card), sort_keys=False, allow_unicode=True)
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# Synthetic augmentation set: {card['num_images']} images, {len(card['classes'])} classes",
        "",
        "Generated by a diffusion model; every image is labelled with the class it was conditioned on.",
        "",
        "## How it was made",
        "",
        f"- checkpoint: `{card['checkpoint']}` (SHA-256 `{card['checkpoint_sha256']}`)",
        f"- sampler: {s['sampler']}, {s['steps']} steps, guidance {s['guidance_scale']}"
        + (f" (per class: {s['class_guidance']})" if s["class_guidance"] else "")
        + (f", sampler options {s['sampler_args']}" if s["sampler_args"] else ""),
        f"- precision: {s['precision']}; base seed {s['seed']} "
        "(image i of class c: seed = SHA-256 of (seed, c, i))",
        f"- sizing: {card['quota_mode']}",
        f"- image-conditioned: {conditioned}",
        f"- curation: {card['curation_summary']}",
        f"- formats: {', '.join(card['formats'])}; config hash `{card['config_hash']}` "
        "(SHA-256 of every setting that shapes the files; in every manifest row)",
        "",
        "## Images per class",
        "",
        "| index | class | folder | planned | kept | dropped (classifier) | dropped (near-duplicate) "
        "| flagged near-duplicate |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in card["classes"]:
        name = c["name"].replace("|", "\\|").replace("\n", " ")  # a class name must not break the table
        lines.append(
            f"| {c['index']} | {name} | {c['folder']} | {c['planned']} | {c['kept']} | "
            f"{c['dropped_classifier']} | {c['dropped_near_duplicate']} | {c['flagged_near_duplicate']} |"
        )
    lines += ["", "The full configuration is in `dataset_card.json`.", ""]
    return "\n".join(lines)
