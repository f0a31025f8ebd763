"""Optional filters for generated images (off unless configured).

- :class:`ClassifierFilter` drops images a classifier does not assign to their intended class with at
  least ``min_confidence``.
- :class:`NearDuplicateFilter` finds images whose nearest training image is closer than ``threshold``
  in a feature space (pixels by default): a memorisation check. It flags them, or drops them.

Both see images exactly as they are saved (uint8, mapped back to [-1, 1]), and run their networks on
fixed-size chunks (see :mod:`diffaug.sampling.fixed_shape`), so verdicts do not depend on the batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from diffaug.config import ConfigError
from diffaug.sampling.fixed_shape import apply_in_chunks

DuplicateAction = Literal["flag", "drop"]
DUPLICATE_ACTIONS = ("flag", "drop")


def load_torchscript(path: str | Path, what: str) -> torch.nn.Module:
    """A TorchScript module from ``path`` (its own graph format, not a pickle), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; give a TorchScript file (torch.jit.save)")
    try:
        with warnings.catch_warnings():
            # torch.export's .pt2 files, which recent torch suggests instead, unpickle Python objects
            # (weights_only=False) when loaded; TorchScript archives run no arbitrary Python.
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ConfigError(
            f"{what} {path} is not a TorchScript file ({error}); save it with torch.jit.save"
        ) from None
    return module.eval()


@dataclass(frozen=True)
class ClassifierVerdict:
    keep: Tensor  # (N,) bool
    confidence: Tensor  # (N,) probability of the intended class


class ClassifierFilter:
    """Keep an image iff the classifier's top class is its intended class with probability >= min_confidence.

    ``classifier(images)`` takes (N, C, H, W) images in [-1, 1] and returns (N, num_classes) logits.
    """

    def __init__(
        self,
        classifier: Callable[[Tensor], Tensor],
        *,
        min_confidence: float,
        num_classes: int,
        rows: int = 32,
    ):
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(
                f"invalid value for config key 'export.min_confidence': {min_confidence}; must be in [0, 1]"
            )
        self.classifier = classifier
        self.min_confidence = float(min_confidence)
        self.num_classes = num_classes
        self.rows = rows

    def to(self, device: torch.device) -> ClassifierFilter:
        if isinstance(self.classifier, torch.nn.Module):
            self.classifier = self.classifier.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> ClassifierVerdict:
        logits = apply_in_chunks(self.classifier, self.rows, images)  # (N, num_classes)
        if logits.ndim != 2 or logits.shape != (len(images), self.num_classes):
            raise ValueError(
                f"the curation classifier returned shape {tuple(logits.shape)} for {len(images)} images; it "
                f"must return (N, {self.num_classes}) logits, one per class of the checkpoint"
            )
        probs = logits.float().softmax(dim=1)  # (N, K)
        confidence = probs.gather(1, labels.view(-1, 1)).squeeze(1)  # (N,)
        keep = (probs.argmax(dim=1) == labels) & (confidence >= self.min_confidence)
        return ClassifierVerdict(keep.cpu(), confidence.cpu())


def pixel_features(images: Tensor) -> Tensor:
    """Flattened pixels scaled by 1/sqrt(D): Euclidean distance = root-mean-square pixel difference."""
    flat = images.flatten(1).float()  # (N, D)
    return flat / math.sqrt(flat.shape[1])


class NearDuplicateFilter:
    """Distance from each image to its nearest reference (training) image in a feature space."""

    def __init__(
        self,
        reference: Tensor,
        *,
        threshold: float,
        action: DuplicateAction = "flag",
        features: Callable[[Tensor], Tensor] | None = None,
        rows: int = 32,
    ):
        if action not in DUPLICATE_ACTIONS:
            raise ConfigError(
                f"invalid value for config key 'export.dedup_action': {action!r}; "
                f"choose one of {', '.join(DUPLICATE_ACTIONS)}"
            )
        if threshold < 0:
            raise ConfigError(
                f"invalid value for config key 'export.dedup_threshold': {threshold}; must be >= 0"
            )
        if len(reference) == 0:
            raise ConfigError("the near-duplicate check needs at least one reference (training) image")
        self.threshold = float(threshold)
        self.action = action
        self.features = features or pixel_features
        self.rows = rows
        self.reference = reference  # (M, C, H, W) in [-1, 1]
        self._reference_features: Tensor | None = None
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> NearDuplicateFilter:
        self._device = device
        if isinstance(self.features, torch.nn.Module):
            self.features = self.features.to(device)
        self._reference_features = None
        return self

    @torch.no_grad()
    def _embed(self, images: Tensor) -> Tensor:
        return apply_in_chunks(self.features, self.rows, images.to(self._device)).flatten(1).float()  # (N, D)

    @torch.no_grad()
    def nearest_distance(self, images: Tensor) -> Tensor:
        """(N,) Euclidean distance to the nearest reference image in feature space."""
        if self._reference_features is None:
            self._reference_features = self._embed(self.reference)  # (M, D)
        query = self._embed(images)  # (N, D)
        best = torch.full((len(query),), math.inf, device=query.device)
        for ref in self._reference_features.split(4096):
            best = torch.minimum(
                best, torch.cdist(query, ref, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
            )
        return best.cpu()

    def is_duplicate(self, distance: Tensor) -> Tensor:
        return distance < self.threshold
