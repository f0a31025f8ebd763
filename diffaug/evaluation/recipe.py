"""The fixed classifier recipe shared by every arm: batch mixing, conventional augmentation, AdamW with
cosine decay for a fixed number of steps, and test accuracy overall and per class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffaug.data import to_model_range
from diffaug.evaluation.data import LabelledImages


@dataclass(frozen=True)
class Recipe:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2.0e-3
    weight_decay: float = 5.0e-4
    label_smoothing: float = 0.0
    synthetic_fraction: float | None = None  # share of synthetic images per batch; None: by set sizes

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be at least 1, got {self.steps} and {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.synthetic_fraction is not None and not 0.0 < self.synthetic_fraction < 1.0:
            raise ValueError(
                f"synthetic_fraction must be in (0, 1) or None (mix by set sizes), got {self.synthetic_fraction}"
            )


class ConventionalAugment:
    """Random affine jitter per image (shift, rotation, zoom) and optional horizontal flips, on tensors.

    Edges are replicated rather than filled, so a shifted image never shows a constant band that a
    classifier could learn as a cue.
    """

    def __init__(self, *, translate: float = 0.1, rotate: float = 10.0, scale: float = 0.1, hflip: bool = False):
        if not (0 <= translate < 1 and 0 <= rotate <= 180 and 0 <= scale < 1):
            raise ValueError(
                f"need 0 <= translate < 1, 0 <= rotate <= 180, 0 <= scale < 1; got {translate}, {rotate}, {scale}"
            )
        self.translate, self.rotate, self.scale, self.hflip = translate, rotate, scale, hflip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(n, generator=generator)

        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        zoom = uniform(1 - self.scale, 1 + self.scale)
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(n)
        # affine_grid maps output to input coordinates in [-1, 1]; a shift of 2 t is a fraction t of the width.
        shift = torch.stack([uniform(-2 * self.translate, 2 * self.translate) for _ in range(2)], dim=1)  # (N, 2)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )  # (N, 2, 3)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _IndexStream:
    """Endless indices into a set of ``n`` items, one fresh permutation per pass."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order, self.position = torch.randperm(n, generator=generator), 0

    def take(self, m: int) -> Tensor:
        out = []
        while m > 0:
            if self.position == self.n:
                self.order, self.position = torch.randperm(self.n, generator=self.generator), 0
            chunk = self.order[self.position : self.position + m]
            self.position += len(chunk)
            m -= len(chunk)
            out.append(chunk)
        return torch.cat(out)


def _pools(real: LabelledImages | None, synthetic: LabelledImages | None) -> list[LabelledImages]:
    pools = [p for p in (real, synthetic) if p is not None and len(p)]
    if not pools:
        raise ValueError("an arm needs real or synthetic training images; both are empty")
    return pools


def fit_classifier(
    model: nn.Module,
    *,
    real: LabelledImages | None,
    synthetic: LabelledImages | None,
    augment: ConventionalAugment | None,
    recipe: Recipe,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """Train ``model`` with the fixed recipe on real and/or synthetic images; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    pools = _pools(real, synthetic)
    if len(pools) == 2 and recipe.synthetic_fraction is not None:
        n_syn = round(recipe.batch_size * recipe.synthetic_fraction)
        shares = [recipe.batch_size - n_syn, n_syn]
    else:
        merged = LabelledImages(
            torch.cat([p.images for p in pools]), torch.cat([p.labels for p in pools]), pools[0].class_map
        )
        pools, shares = [merged], [recipe.batch_size]
    streams = [_IndexStream(len(p), generator) for p in pools]

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))
    )
    for _ in range(recipe.steps):
        picks = [(p, s.take(k)) for p, s, k in zip(pools, streams, shares) if k > 0]
        x = torch.cat([to_model_range(p.images[i]) for p, i in picks])  # (B, C, H, W) in [-1, 1]
        y = torch.cat([p.labels[i] for p, i in picks])  # (B,)
        if augment is not None:
            x = augment(x, generator)
        loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, test: LabelledImages, *, device: torch.device, batch_size: int = 512
) -> tuple[float, Tensor]:
    """Top-1 accuracy over ``test`` and per-class accuracy (K,) (NaN for a class with no test image)."""
    model.to(device).eval()
    predictions = torch.cat(
        [
            model(to_model_range(test.images[i : i + batch_size]).to(device)).argmax(dim=1).cpu()
            for i in range(0, len(test), batch_size)
        ]
    )  # (N,)
    correct = (predictions == test.labels).to(torch.float64)
    per_class_total = torch.bincount(test.labels, minlength=test.num_classes).to(torch.float64)
    per_class_correct = torch.bincount(test.labels, weights=correct, minlength=test.num_classes)
    per_class = per_class_correct / per_class_total  # 0/0 = NaN for an absent class
    return float(correct.mean()), per_class
