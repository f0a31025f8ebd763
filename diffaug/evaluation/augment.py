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

# ---------------------------------------------------------------- batched operations
# Crop, flip and erase are written out over the whole batch with one draw per image: torchvision's v2
# versions draw once per call, and a per-image loop over them cost 25-40 ms per 32 images on a CPU core,
# about as much as the classifier's training step. Same distributions as v2.RandomCrop(padding, "reflect"),
# v2.RandomHorizontalFlip() and v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value=0).


def _pad_crop(x: Tensor) -> Tensor:
    """Reflect-pad by an eighth of the side (4 px at 32, 3 px at 28) and crop back at a random offset."""
    n, _, h, w = x.shape
    pad = max(1, round(h / 8))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)


def _flip(x: Tensor) -> Tensor:
    flip = torch.rand(len(x)) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _erase(x: Tensor) -> Tensor:
    """Random erasing (Zhong et al. 2020): with probability 1/2 a rectangle of 2-25% of the area, aspect
    ratio log-uniform in [0.3, 3.3], set to 0 (mid-grey in [-1, 1])."""
    n, _, h, w = x.shape
    area = h * w * (0.02 + 0.23 * torch.rand(n))
    aspect = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(n))
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n) * (h - eh + 1)).long()
    left = (torch.rand(n) * (w - ew + 1)).long()
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside = (((ys >= top[:, None]) & (ys < (top + eh)[:, None]))[:, :, None]
              & ((xs >= left[:, None]) & (xs < (left + ew)[:, None]))[:, None, :])  # (N, H, W)
    inside &= (torch.rand(n) < 0.5)[:, None, None]
    return x.masked_fill(inside[:, None], 0.0)


# ---------------------------------------------------------------- per-image operations (uint8 in, uint8 out)


def _image_ops() -> dict[str, Callable[[], v2.Transform]]:
    return {
        "affine": lambda: v2.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        "trivial": lambda: v2.TrivialAugmentWide(),
        "randaug": lambda: v2.RandAugment(num_ops=2, magnitude=9),
    }


BATCHED = ("crop", "flip", "erase")
MIXERS = ("mixup", "cutmix")
OPERATIONS = ("none", *BATCHED, *_image_ops(), *MIXERS)


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
        self.size = size  # kept for the recipe's identity; every operation adapts to the batch's size
        self.ops = [p for p in parts if p not in MIXERS and (p != "flip" or hflip)]  # in the recipe's order
        self.mixer = next((p for p in parts if p in MIXERS), None)
        # The per-image v2 operations work on uint8 (as torchvision's recipes do) and come first.
        per_image = [_image_ops()[p]() for p in self.ops if p not in BATCHED]
        self._uint8 = v2.Compose(per_image) if per_image else None
        self._batched = [{"crop": _pad_crop, "flip": _flip, "erase": _erase}[p] for p in self.ops if p in BATCHED]
        self.mix_alpha = mix_alpha

    @property
    def identity(self) -> bool:
        return not self.ops and self.mixer is None

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> Batch:
        """``images`` (B, C, H, W) uint8 and ``targets`` (B, K) probabilities -> augmented :class:`Batch`."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self._uint8 is not None:
                images = torch.stack([self._uint8(img) for img in images])
            x = images.to(torch.float32) / 127.5 - 1.0  # (B, C, H, W) in [-1, 1], as to_model_range
            for op in self._batched:
                x = op(x)
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
