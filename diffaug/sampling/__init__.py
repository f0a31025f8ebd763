"""Generating images from trained checkpoints: preview grids and labelled synthetic augmentation sets.

What a set is on disk (layout, manifest, card, shards, finalisation, reading it back) is
:mod:`diffaug.augset`; this package makes the images and writes them through it.
"""

from diffaug.sampling.curation import ClassifierFilter, NearDuplicateFilter
from diffaug.sampling.export import run_export
from diffaug.sampling.export_config import export_augmentation_set
from diffaug.sampling.generate import draw, generate_images
from diffaug.sampling.grid import class_grid, image_grid, sample_grid
from diffaug.sampling.model import LoadedModel, apply_overrides, load_model
from diffaug.sampling.quotas import compute_quotas
from diffaug.sampling.ranks import Partition, resolve_partition
from diffaug.sampling.settings import SampleSettings

__all__ = [
    "ClassifierFilter",
    "LoadedModel",
    "NearDuplicateFilter",
    "Partition",
    "SampleSettings",
    "apply_overrides",
    "class_grid",
    "compute_quotas",
    "draw",
    "export_augmentation_set",
    "generate_images",
    "image_grid",
    "load_model",
    "resolve_partition",
    "run_export",
    "sample_grid",
]
