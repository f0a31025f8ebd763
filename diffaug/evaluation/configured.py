"""Config -> evaluation parts: the real data to compare with and the feature extractor, shared by
``diffaug eval`` and the in-training quality monitor."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from diffaug.config import ConfigError
from diffaug.evaluation.data import LabelledImages, load_real
from diffaug.evaluation.features import (
    FEATURE_EXTRACTORS,
    FeatureExtractor,
    InceptionFeatures,
    domain_features,
    random_features,
)


def evaluation_device(name: str) -> torch.device:
    """``eval.*.device``: "auto" is the GPU when there is one, else the CPU; other names as torch reads them.
    (Sampling's ``sampling.device`` is resolved per process and checked, in ``diffaug.sampling.generate``.)"""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def real_split(cfg: DictConfig, *, split: str, per_class: int | None = None, max_items: int | None = None) -> LabelledImages:
    """A split of the run's real data (``data.*``), optionally k per class or capped."""
    d = cfg.data
    if d.source == "shards" and split == "test":
        raise ConfigError("data.source=shards has no test split to evaluate on; use a folder or IDX copy of the test data")
    return load_real(
        source=d.source, path=d.path, split=split, resolution=int(d.resolution), channels=int(d.channels),
        per_class_limit=per_class, seed=int(d.seed), max_items=max_items,
        class_names=None if d.class_names is None else list(d.class_names),
    )


def build_extractor(cfg: DictConfig, device: torch.device) -> FeatureExtractor:
    """The feature extractor named by ``eval.quality.features``."""
    q = cfg.eval.quality
    FEATURE_EXTRACTORS.get(q.features)  # KeyError listing the valid names
    if q.features == "inception":
        return InceptionFeatures(path=q.inception_path, device=device)
    if q.features == "domain":
        # Judged by a classifier of all the real training data, not only the k images the model saw.
        return domain_features(
            real_split(cfg, split="train"), cache_dir=q.cache_dir, steps=int(q.domain_steps), seed=int(q.seed),
            device=device,
        )
    return random_features(in_channels=int(cfg.data.channels), seed=int(q.seed), device=device)
