"""Precision, recall, density and coverage of a synthetic set, from k-nearest-neighbour balls in feature space.

FID mixes fidelity and diversity into one number; these separate them, which matters for augmentation:
a set that is faithful but covers one mode per class (high precision, low recall) adds little.

* precision: share of synthetic samples inside the real manifold, the union of balls around every real
  sample with the radius of its k-th nearest real neighbour (Kynkaanniemi et al. 2019);
* recall: share of real samples inside the synthetic manifold, built the same way;
* density: how many real balls hold each synthetic sample, / k, averaged (Naeem et al. 2020; ~1 when the
  two sets match, above 1 when samples crowd where real data is dense);
* coverage: share of real samples whose ball holds at least one synthetic sample (Naeem et al. 2020),
  robust to real outliers that inflate recall.

Distances are Euclidean in float64, computed in blocks so memory stays O(block x N).
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 1024


def _balls_holding(query: Tensor, ref: Tensor, radii: Tensor) -> Tensor:
    """(N_q,) how many of the balls (ref row, its radius) hold each query row."""
    counts = []
    for start in range(0, len(query), BLOCK):
        d = torch.cdist(query[start : start + BLOCK], ref)  # (B, N_ref)
        counts.append((d <= radii[None, :]).sum(dim=1))
    return torch.cat(counts)


def knn_radii(features: Tensor, k: int) -> Tensor:
    """(N,) distance from every row to its k-th nearest other row."""
    if len(features) <= k:
        raise ValueError(f"a k-NN radius with k={k} needs more than {k} samples, got {len(features)}")
    radii = []
    for start in range(0, len(features), BLOCK):
        d = torch.cdist(features[start : start + BLOCK], features)  # (B, N); the row itself is at distance 0
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall(real_features: Tensor, fake_features: Tensor, *, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage between (N_real, D) and (N_fake, D) features, with k-NN balls."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, fake = real_features.double(), fake_features.double()
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    real_balls_per_fake = _balls_holding(fake, real, real_radii)  # (N_fake,)
    fake_balls_per_real = _balls_holding(real, fake, fake_radii)  # (N_real,)
    # Coverage: real sample i is covered when its nearest synthetic sample lies within its own ball.
    nearest_fake_dist = torch.cat([
        torch.cdist(real[s : s + BLOCK], fake).min(dim=1).values for s in range(0, len(real), BLOCK)
    ])  # (N_real,)
    return {
        "precision": float((real_balls_per_fake > 0).double().mean()),
        "recall": float((fake_balls_per_real > 0).double().mean()),
        "density": float(real_balls_per_fake.double().mean() / k),
        "coverage": float((nearest_fake_dist <= real_radii).double().mean()),
        "k": k,
    }
