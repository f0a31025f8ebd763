"""Sampling from trained checkpoints: preview grids and labelled synthetic augmentation sets."""

from diffaug.sampling.api import (
    LoadedModel,
    apply_overrides,
    export_augmentation_set,
    file_sha256,
    load_model,
    sample_grid,
)
from diffaug.sampling.curation import ClassifierFilter, NearDuplicateFilter
from diffaug.sampling.export import run_export
from diffaug.sampling.finalize import ExportSummary, finalize_export
from diffaug.sampling.names import sanitize_class_names
from diffaug.sampling.plan import ExportPlan
from diffaug.sampling.quotas import compute_quotas
from diffaug.sampling.ranks import Partition, resolve_partition
from diffaug.sampling.seeds import derive_seed

__all__ = [
    "ClassifierFilter",
    "ExportPlan",
    "ExportSummary",
    "LoadedModel",
    "NearDuplicateFilter",
    "Partition",
    "apply_overrides",
    "compute_quotas",
    "derive_seed",
    "export_augmentation_set",
    "file_sha256",
    "finalize_export",
    "load_model",
    "resolve_partition",
    "run_export",
    "sample_grid",
    "sanitize_class_names",
]
