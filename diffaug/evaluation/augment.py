"""Conventional augmentation recipes for the downstream classifier, named and composable.

A recipe is a ``+``-joined list of operations, e.g. ``crop+erase`` or ``trivial+crop+cutmix``; the
benchmark tries several and keeps the one that scores best on validation, so "real + conventional
augmentation" is a strong, tuned baseline and not one fixed guess. The image operations are
torchvision.transforms.v2's; this module only adds what the benchmark needs around them:

- per-image draws (a v2 transform given a batch applies ONE random draw to all of it);
- reproducibility from the benchmark's own generator (v2 draws from torch's global generator, so each
  batch runs inside ``fork_rng`` seeded from that generator: the same seed gives the same pixels, and
  nothing outside the benchmark is disturbed);
- batch-mixing operations (mixup, cutmix) that turn hard labels into soft ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from diffaug.registry import did_you_mean

# ---------------------------------------------------------------- per-image operations (uint8 in, uint8 out)


def _pad_crop(size: int) -> v2.Transform:
    # Pad-and-crop by an eighth of the side (4 px at 32, 3 px at 28), edges reflected (no constant band
    # that a classifier could learn as a cue).
    return v2.RandomCrop(size, padding=max(1, round(size / 8)), padding_mode="reflect")


def _image_ops(size: int, hflip: bool) -> dict[str, Callable[[], v2.Transform]]:
    return {
        "crop": lambda: _pad_crop(size),
        "flip": lambda: v2.RandomHorizontalFlip() if hflip else v2.Identity(),
        "affine": lambda: v2.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        "trivial": lambda: v2.TrivialAugmentWide(),
        "randaug": lambda: v2.RandAugment(num_ops=2, magnitude=9),
        "erase": lambda: v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value=0),
    }


MIXERS = ("mixup", "cutmix")
OPERATIONS = ("none", *_image_ops(8, False), *MIXERS)


@dataclass(frozen=True)
class Batch:
    """A training batch after augmentation: images in [-1, 1] and per-class target probabilities."""

    x: Tensor  # (B, C, H, W) float in [-1, 1]
    y: Tensor  # (B, K) float, rows sum to 1


def parse_recipe(name: str) -> tuple[str, ...]:
    """``"crop+erase"`` -> ``("crop", "erase")``; ``"none"`` -> ``()``; unknown names fail with the valid ones."""
    parts = tuple(p.strip() for p in str(name).split("+") if p.strip())
    if not parts:
        raise ValueError(f"empty augmentation recipe {name!r}; use 'none' or operations from {list(OPERATIONS)}")
    for part in parts:
        if part not in OPERATIONS:
            raise ValueError(
                f"unknown augmentation operation {part!r} in recipe {name!r}; operations are {list(OPERATIONS)}, "
                f"joined with '+' (e.g. crop+erase){did_you_mean(part, list(OPERATIONS))}"
            )
    if "none" in parts and len(parts) > 1:
        raise ValueError(f"recipe {name!r} combines 'none' with other operations")
    mixers = [p for p in parts if p in MIXERS]
    if len(mixers) > 1:
        raise ValueError(f"recipe {name!r} has {mixers}; use at most one of {list(MIXERS)}")
    return () if parts == ("none",) else parts


class Augmenter:
    """One conventional recipe, applied per image and reproducibly from a ``torch.Generator``.

    ``hflip`` says whether left-right flips keep the class (clothing yes, digits and text no); without it
    ``flip`` is the identity and TrivialAugment / RandAugment never flip either (neither does by itself).
    """

    def __init__(self, recipe: str, *, size: int, hflip: bool = False, mix_alpha: float = 1.0):
        self.name = str(recipe)
        parts = parse_recipe(recipe)
        ops = _image_ops(size, hflip)
        self.image_ops = [p for p in parts if p not in MIXERS]
        self.mixer = next((p for p in parts if p in MIXERS), None)
        # Random erasing works on float images; everything else on uint8, as torchvision's recipes do.
        uint8_ops = [ops[p]() for p in self.image_ops if p != "erase"]
        self._uint8 = v2.Compose(uint8_ops) if uint8_ops else None
        self._erase = ops["erase"]() if "erase" in self.image_ops else None
        self.mix_alpha = mix_alpha

    @property
    def identity(self) -> bool:
        return not self.image_ops and self.mixer is None

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> Batch:
        """``images`` (B, C, H, W) uint8 and ``targets`` (B, K) probabilities -> augmented :class:`Batch`."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self._uint8 is not None:
                images = torch.stack([self._uint8(img) for img in images])
            x = images.to(torch.float32) / 127.5 - 1.0  # (B, C, H, W) in [-1, 1], as to_model_range
            if self._erase is not None:
                x = torch.stack([self._erase(img) for img in x])
            if self.mixer is not None:
                x, targets = _mix(self.mixer, x, targets, self.mix_alpha)
        return Batch(x, targets)


def _mix(kind: str, x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """MixUp (Zhang et al. 2018) / CutMix (Yun et al. 2019) with a partner from the shuffled batch.

    Written out rather than through v2.MixUp / v2.CutMix because those take integer labels only, and
    the benchmark mixes soft targets (teacher labels of synthetic images) too.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x))
    if kind == "mixup":
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    h, w = x.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)  # the share actually kept
    return x, lam * y + (1 - lam) * y[perm]


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(labels, num_classes).to(torch.float32)
