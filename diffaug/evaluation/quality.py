"""Sample quality of a synthetic set against real data, overall and per class.

* FID and KID: torchmetrics' FrechetInceptionDistance and KernelInceptionDistance, fed features computed
  (and for the real data cached) beforehand by any :mod:`feature extractor <diffaug.evaluation.features>`;
* precision, recall, density, coverage: :mod:`diffaug.evaluation.manifold`, on the same features;
* Inception Score (torchmetrics' InceptionScore on the extractor's logits) and label agreement (the share of
  synthetic images the extractor's classifier assigns to the class they were generated for), when the
  extractor has a classifier head: with the domain classifier these say whether a class-conditional
  model draws recognisable members of each class. With ``inception`` features the logits come from
  torch-fidelity's Inception port (the TorchScript FID network has no head); the report's ``networks``
  names the network behind each figure.
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
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from diffaug.evaluation.data import LabelledImages
from diffaug.evaluation.features import FeatureExtractor, reference_features
from diffaug.evaluation.manifold import precision_recall

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


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = 0) -> dict[str, float]:
    """IS = exp E_x KL(p(y | x) || p(y)), mean and std over ``splits`` random splits of (N, K) logits."""
    splits = max(1, min(splits, len(logits)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics permutes before splitting with the global generator
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # one split has no spread
            mean, std = metric.compute()
    return {"is_mean": float(mean), "is_std": float(std) if splits > 1 else 0.0}


def _manifold_or_none(real: Tensor, fake: Tensor, k: int) -> dict[str, float]:
    if min(len(real), len(fake)) <= k:
        return {}  # too few samples for k-NN balls (a tiny class); FID/KID still reported
    return precision_recall(real, fake, k=k)


def sample_quality(
    real: LabelledImages,
    synthetic: LabelledImages,
    *,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike,
    per_class: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    nearest_k: int = 3,
    is_splits: int = 10,
    seed: int = 0,
    reconstructed: Tensor | None = None,
) -> dict[str, Any]:
    """``{"features": id, "overall": {...}, "per_class": {name: {...}}}``: FID, KID, precision, recall,
    density, coverage for each, and IS and label agreement when the extractor has class logits.

    ``reconstructed``: the real images passed through a latent model's autoencoder (uint8, like ``real``);
    their row under "reconstruction" is the best a model decoding that autoencoder's latents can score."""
    synthetic = synthetic.aligned_to(real.class_map)
    real_features = reference_features(extractor, real, cache_dir=cache_dir)  # (N_real, D)
    fake_features = extractor(synthetic.images)  # (N_fake, D)
    settings = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": seed}
    report: dict[str, Any] = {
        "features": extractor.identity,
        # Which network gave which figure: FID, KID and the manifold metrics come from the features, the
        # Inception Score and label agreement from the logits, which for Inception are another port's.
        "networks": {"features": extractor.identity,
                     "logits": extractor.logits_identity if extractor.has_logits else None},
        "overall": fid_kid(real_features, fake_features, **settings)
        | _manifold_or_none(real_features, fake_features, nearest_k),
        "per_class": {},
    }
    if reconstructed is not None:
        recon_features = extractor(reconstructed)  # (N_real, D)
        report["reconstruction"] = (fid_kid(real_features, recon_features, **settings)
                                    | _manifold_or_none(real_features, recon_features, nearest_k))
    predicted = None
    if extractor.has_logits:
        logits = extractor.logits(synthetic.images)  # (N_fake, K)
        report["overall"] |= inception_score(logits, splits=is_splits, seed=seed)
        if logits.shape[1] == real.num_classes:  # a classifier of these very classes
            predicted = logits.argmax(dim=1)
            report["overall"]["label_agreement"] = float((predicted == synthetic.labels).double().mean())
            # The same classifier on the real reference: the ceiling to read the synthetic agreement against.
            real_predicted = extractor.logits(real.images).argmax(dim=1)
            report["overall"]["label_agreement_real"] = float((real_predicted == real.labels).double().mean())
    else:
        report["inception_score"] = f"not computed: the {extractor.identity} features have no classifier head"
    if per_class:
        for k, name in enumerate(real.class_map.names):
            in_class = synthetic.labels == k
            r, f = real_features[real.labels == k], fake_features[in_class]
            if len(r) < 2 or len(f) < 2:
                logger.warning("class %r: %d real and %d synthetic images, too few for FID; skipped", name, len(r), len(f))
                continue
            report["per_class"][name] = fid_kid(r, f, **settings) | _manifold_or_none(r, f, nearest_k)
            if predicted is not None:
                report["per_class"][name]["label_agreement"] = float((predicted[in_class] == k).double().mean())
    return report


def quality_markdown(report: dict[str, Any]) -> str:
    def num(m: dict[str, Any], key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "–"

    def row(name: str, m: dict[str, Any]) -> str:
        cells = [name, num(m, "fid"), f"{1000 * m['kid_mean']:.3f} ± {1000 * m['kid_std']:.3f}",
                 *(num(m, key) for key in ("precision", "recall", "density", "coverage", "label_agreement")),
                 str(m["n_real"]), str(m["n_synthetic"])]
        return "| " + " | ".join(cells) + " |"

    o = report["overall"]
    is_line = (f"Inception Score (on these features' classifier): {o['is_mean']:.3f} ± {o['is_std']:.3f}"
               if "is_mean" in o else f"Inception Score {report.get('inception_score', 'not computed')}")
    if "label_agreement_real" in o:
        is_line += (f"\n\nLabel agreement of the same classifier on the real reference images: "
                    f"{o['label_agreement_real']:.3f} (synthetic: {o['label_agreement']:.3f})")
    networks = report.get("networks") or {"features": report["features"], "logits": None}
    source = f"FID, KID, precision, recall, density and coverage from `{networks['features']}`"
    if networks["logits"] == networks["features"]:
        source += "; Inception Score and label agreement from the same network's classifier head"
    elif networks["logits"]:
        source += f"; Inception Score and label agreement from `{networks['logits']}`, a different network"
    lines = [
        f"# Sample quality (features: `{report['features']}`)",
        "",
        f"Networks: {source}.",
        "",
        "| set | FID | KID × 1000 | precision | recall | density | coverage | label agreement | real | synthetic |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row("all classes", o),
        *([row("decode(encode(real)): the autoencoder's ceiling", report["reconstruction"])]
          if "reconstruction" in report else []),
        *[row(name, m) for name, m in report["per_class"].items()],
        "",
        is_line,
    ]
    return "\n".join(lines) + "\n"


def write_quality_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "quality.json", "report": out / "quality.md"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    paths["report"].write_text(quality_markdown(report))
    return paths

