"""Data sources, pixel conventions and the Lightning data module."""

from diffaug.data.base import (
    SOURCES,
    ImageSource,
    SourceView,
    holdout_indices,
    select_indices,
    source_needs_path,
)
from diffaug.data.classmap import ClassMap
from diffaug.data.corrupt import CorruptDataError, CorruptionLog
from diffaug.data.datamodule import DiffusionDataModule
from diffaug.data.folder import FolderSource
from diffaug.data.idx import IdxFormatError, IdxSource, read_idx, read_idx_header
from diffaug.data.shards import ShardDataset, read_manifest
from diffaug.data.sklearn_digits import DigitsSource
from diffaug.data.transforms import ImageTransform, to_model_range, to_uint8

__all__ = [
    "SOURCES",
    "ClassMap",
    "CorruptDataError",
    "CorruptionLog",
    "DiffusionDataModule",
    "DigitsSource",
    "FolderSource",
    "IdxFormatError",
    "IdxSource",
    "ImageSource",
    "ImageTransform",
    "ShardDataset",
    "SourceView",
    "read_idx",
    "read_idx_header",
    "read_manifest",
    "holdout_indices",
    "select_indices",
    "source_needs_path",
    "to_model_range",
    "to_uint8",
]
