"""Memorisation: how many synthetic images are near copies of a training image.

The test of Gu et al. (2023, "On memorization in diffusion models"): a synthetic image is a near copy
when its nearest training image is closer than a third of the distance to the second nearest, i.e. it
sits on one training image rather than between several. Distances are Euclidean in pixel space, which
is what a copy means for the small images diffaug's low-data users have; the ratio needs no threshold
tuned to the data's scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffaug.evaluation.data import LabelledImages

NEAR_COPY_RATIO = 1.0 / 3.0


def nearest_ratio(synthetic: torch.Tensor, train: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """(N,) distance to the nearest over distance to the second-nearest training image, for uint8 images
    ``synthetic`` (N, C, H, W) against ``train`` (M, C, H, W), M >= 2."""
    if len(train) < 2:
        raise ValueError(f"the nearest-neighbour ratio needs at least 2 training images, got {len(train)}")
    reference = train.reshape(len(train), -1).to(torch.float32)  # (M, D)
    ratios = []
    for start in range(0, len(synthetic), block):
        queries = synthetic[start : start + block].reshape(-1, reference.shape[1]).to(torch.float32)  # (B, D)
        nearest = torch.cdist(queries, reference).topk(2, dim=1, largest=False).values  # (B, 2), ascending
        ratios.append(nearest[:, 0] / nearest[:, 1].clamp_min(1e-12))
    return torch.cat(ratios)


def memorisation_report(synthetic: LabelledImages, train: LabelledImages) -> dict[str, Any]:
    """Near copies overall and per class (``per_class``: class name -> share), against every training image."""
    ratio = nearest_ratio(synthetic.images, train.images)
    copies = ratio < NEAR_COPY_RATIO
    labels = synthetic.labels.numpy()
    per_class = {
        name: float(copies[torch.from_numpy(labels == c)].float().mean()) if (labels == c).any() else float("nan")
        for c, name in enumerate(synthetic.class_map.names)
    }
    return {
        "n": len(synthetic),
        "near_copies": int(copies.sum()),
        "share": float(copies.float().mean()),
        "median_ratio": float(np.median(ratio.numpy())),
        "per_class": per_class,
    }
