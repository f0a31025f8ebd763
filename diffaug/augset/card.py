"""The dataset card: ``dataset_card.json`` (every fact about the set) and ``dataset_card.md`` (the same for a
reader, with Hugging Face dataset-card metadata as YAML front matter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

from diffaug.augset.layout import SHARDS_DIR
from diffaug.augset.plan import TRAINING_SOURCES, ExportPlan, WorkItem

CARD_FORMAT_VERSION = 1


def _per_class(
    plan: ExportPlan,
    items: list[WorkItem],
    records: Mapping[tuple[int, int], Mapping[str, Any]],
    test: Callable[[Mapping[str, Any]], bool],
) -> list[int]:
    counts = [0] * len(plan.class_names)
    for it in items:
        if test(records[(it.class_index, it.index)]):
            counts[it.class_index] += 1
    return counts


def dataset_card(
    plan: ExportPlan,
    info: Mapping[str, Any],
    items: list[WorkItem],
    records: Mapping[tuple[int, int], Mapping[str, Any]],
    shard_counts: Mapping[str, int],
) -> dict[str, Any]:
    """The dataset card of a finished set: how it was made, curation, counts per class, shards, config."""
    kept = _per_class(plan, items, records, lambda r: r["kept"])
    by_classifier = _per_class(plan, items, records, lambda r: r["dropped_by"] == "classifier")
    by_duplicate = _per_class(plan, items, records, lambda r: r["dropped_by"] == "near_duplicate")
    flagged = _per_class(plan, items, records, lambda r: bool(r.get("near_duplicate")) and r["kept"])
    curation = plan.curation
    parts = []
    if curation.get("classifier"):
        parts.append(
            f"classifier {curation['classifier']} (min confidence {curation['min_confidence']}) "
            f"dropped {sum(by_classifier)}"
        )
    if curation.get("dedup_threshold") is not None:
        parts.append(
            f"near-duplicates of training images ({curation['dedup_features']} distance < "
            f"{curation['dedup_threshold']}): {sum(by_duplicate)} dropped, {sum(flagged)} flagged"
        )
    card = {
        "format_version": CARD_FORMAT_VERSION,
        "num_images": sum(kept),
        "config_hash": plan.config_hash,
        "checkpoint": info.get("checkpoint"),
        "checkpoint_sha256": plan.checkpoint_sha256,
        "quota_mode": info.get("quota_mode", "given quotas"),
        "formats": list(plan.formats),
        "image_shape": list(plan.image_shape),
        "source_images": info.get("source_images"),
        "strength": plan.strength,
        "sampling": {
            "sampler": plan.sampler,
            "steps": plan.steps,
            "seed": plan.seed,
            "precision": plan.precision,
            "device_type": plan.device_type,
            "sampler_args": plan.sampler_args,
            "guidance_scale": info.get("guidance_scale", plan.guidance[0] if plan.guidance else 1.0),
            "class_guidance": info.get("class_guidance", {}),
            **({"random_guidance": list(plan.random_guidance)} if plan.random_guidance else {}),
        },
        "curation": curation,
        "curation_summary": "; ".join(parts) if parts else "none",
        "classes": [
            {
                "index": c,
                "name": name,
                "folder": plan.class_dirs[c],
                "guidance": plan.guidance[c],
                "planned": plan.quotas[c],
                "kept": kept[c],
                "dropped_classifier": by_classifier[c],
                "dropped_near_duplicate": by_duplicate[c],
                "flagged_near_duplicate": flagged[c],
            }
            for c, name in enumerate(plan.class_names)
        ],
        "shards": [{"name": f"{SHARDS_DIR}/{name}", "count": n} for name, n in sorted(shard_counts.items())],
        "config": info.get("config"),
    }
    if plan.autoencoder_sha256 is not None:  # a latent model: the images are its decoder's
        card["autoencoder"] = {"path": info.get("autoencoder"), "sha256": plan.autoencoder_sha256}
    return card


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
            **({"autoencoder_sha256": card["autoencoder"]["sha256"]} if card.get("autoencoder") else {}),
            "sampler": s["sampler"], "steps": s["steps"], "seed": s["seed"], "guidance_scale": s["guidance_scale"],
        },
    }


def dataset_card_markdown(card: dict[str, Any]) -> str:
    """The dataset card as Markdown: what the set is, how it was made, and counts per class, after the
    Hugging Face metadata block (:func:`dataset_card_metadata`)."""
    s = card["sampling"]
    conditioned = "no"
    if card["source_images"]:
        where = card["source_images"]
        where = "the model's training images" if where == TRAINING_SOURCES else where
        conditioned = f"yes, SDEdit strength {card['strength']} from {where}"
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
        f"- sampler: {s['sampler']}, {s['steps']} steps, guidance "
        + (f"uniform in {s['random_guidance']}, per image" if s.get("random_guidance") else str(s["guidance_scale"]))
        + (f" (per class: {s['class_guidance']})" if s["class_guidance"] else "")
        + (f", sampler options {s['sampler_args']}" if s["sampler_args"] else ""),
        f"- precision: {s['precision']}; base seed {s['seed']} "
        "(image i of class c: seed = SHA-256 of (seed, c, i))",
        f"- sizing: {card['quota_mode']}",
        f"- image-conditioned: {conditioned}",
        *([f"- latent diffusion: decoded by the autoencoder `{card['autoencoder']['path']}` "
           f"(SHA-256 `{card['autoencoder']['sha256']}`)"] if card.get("autoencoder") else []),
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
