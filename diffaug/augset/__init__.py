"""The augmentation-set format: what an exported set is on disk, how it is written and how it is read back.

Layout and names (:mod:`~diffaug.augset.layout`, :mod:`~diffaug.augset.names`), the plan and per-image seeds
that identify a set, the manifest and dataset card, the one tar-shard writer and image encoder, crash-safe
writes, finalisation, and reading a finished set. Nothing here builds or runs a network: generating the
images is :mod:`diffaug.sampling`'s job, which writes through this package.
"""

from diffaug.augset.files import atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256
from diffaug.augset.finalize import ExportSummary, finalize_export
from diffaug.augset.images import encode_image
from diffaug.augset.names import sanitize_class_names
from diffaug.augset.plan import ExportPlan, WorkItem, build_items, items_of_part
from diffaug.augset.read import AugmentationSet, SetFormat, open_set, read_card
from diffaug.augset.seeds import derive_seed
from diffaug.augset.shards import write_shards, write_tar

__all__ = [
    "AugmentationSet",
    "ExportPlan",
    "ExportSummary",
    "SetFormat",
    "WorkItem",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "build_items",
    "derive_seed",
    "encode_image",
    "file_sha256",
    "finalize_export",
    "items_of_part",
    "open_set",
    "read_card",
    "sanitize_class_names",
    "write_shards",
    "write_tar",
]
