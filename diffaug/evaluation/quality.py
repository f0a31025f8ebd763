"""Sample quality: FID and KID of a synthetic set against real data, overall and per class.

The distances are torchmetrics' FrechetInceptionDistance and KernelInceptionDistance, fed features
that were computed (and for the real data cached) beforehand by any :mod:`feature extractor
<diffaug.evaluation.features>`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffaug.evaluation.data import LabelledImages
from diffaug.evaluation.features import FeatureExtractor, reference_features

logger = logging.getLogger(__name__)


class _Precomputed(nn.Module):
    """The 'network' of the torchmetrics metrics when features are computed beforehand: the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_kid(
    real_features: Tensor, fake_features: Tensor, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two (N, D) feature sets.

    KID's subset size is lowered to the smaller set; KID subsets are drawn with ``seed``.
    """
    n_real, n_fake = len(real_features), len(fake_features)
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {n_real} real and {n_fake} synthetic")
    dim = real_features.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim))
    fid.update(real_features.double(), real=True)
    fid.update(fake_features.double(), real=False)
    subset = min(kid_subset_size, n_real, n_fake)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets, subset_size=subset)
    kid.update(real_features.double(), real=True)
    kid.update(fake_features.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws KID subsets from the global generator
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": n_real,
        "n_synthetic": n_fake,
    }


def sample_quality(
    real: LabelledImages,
    synthetic: LabelledImages,
    *,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike,
    per_class: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"features": id, "overall": {...}, "per_class": {name: {...}}}`` with FID/KID for each."""
    synthetic = synthetic.aligned_to(real.class_map)
    real_features = reference_features(extractor, real, cache_dir=cache_dir)  # (N_real, D)
    fake_features = extractor(synthetic.images)  # (N_fake, D)
    settings = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": seed}
    report: dict[str, Any] = {
        "features": extractor.identity,
        "overall": fid_kid(real_features, fake_features, **settings),
        "per_class": {},
    }
    if per_class:
        for k, name in enumerate(real.class_map.names):
            r, f = real_features[real.labels == k], fake_features[synthetic.labels == k]
            if len(r) < 2 or len(f) < 2:
                logger.warning("class %r: %d real and %d synthetic images, too few for FID; skipped", name, len(r), len(f))
                continue
            report["per_class"][name] = fid_kid(r, f, **settings)
    return report


def quality_markdown(report: dict[str, Any]) -> str:
    def row(name: str, m: dict[str, Any]) -> str:
        return (f"| {name} | {m['fid']:.3f} | {1000 * m['kid_mean']:.3f} ± {1000 * m['kid_std']:.3f} | "
                f"{m['n_real']} | {m['n_synthetic']} |")

    lines = [
        f"# Sample quality (features: `{report['features']}`)",
        "",
        "| set | FID | KID × 1000 | real | synthetic |",
        "|---|---|---|---|---|",
        row("all classes", report["overall"]),
        *[row(name, m) for name, m in report["per_class"].items()],
    ]
    return "\n".join(lines) + "\n"


def write_quality_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "quality.json", "report": out / "quality.md"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    paths["report"].write_text(quality_markdown(report))
    return paths

