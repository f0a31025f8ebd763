"""Where each file of an augmentation set lives, relative to the set's folder.

A finished set::

    images/<class folder>/<index:06d>.png     (format "folder")
    shards/shard-<n:06d>.tar + classes.json + shards.json   (format "shards")
    classes.json, manifest.csv, manifest.jsonl, dataset_card.json, dataset_card.md

While an export runs, ``.export/`` holds its plan and one record log per part. The dataset card is written
last, so its presence marks the set complete.
"""

from __future__ import annotations

from diffaug.data.shards import CLASSES_FILE, MANIFEST_FILE

IMAGES_DIR = "images"
SHARDS_DIR = "shards"
CLASSES_JSON = CLASSES_FILE  # class names in class-index order, the same file beside shards and at the top
SHARD_INDEX = MANIFEST_FILE  # beside the shards: shard file name -> samples
MANIFEST_CSV = "manifest.csv"
MANIFEST_JSONL = "manifest.jsonl"
CARD_JSON = "dataset_card.json"
CARD_MD = "dataset_card.md"
WORK_DIR = ".export"
PLAN_JSON = "plan.json"  # inside WORK_DIR


def image_path(class_dir: str, index: int) -> str:
    """The PNG of image ``index`` of the class stored in folder ``class_dir``."""
    return f"{IMAGES_DIR}/{class_dir}/{index:06d}.png"


def shard_name(position: int) -> str:
    """The file name of shard number ``position``."""
    return f"shard-{position:06d}.tar"
