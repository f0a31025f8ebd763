"""Training one downstream classifier: batches with a fixed number of real images, optional synthetic
images on top, AdamW with cosine decay, and the checkpoint with the best validation accuracy.

Equal real exposure is the rule that makes arms comparable (as in DA-Fusion): every batch holds exactly
``batch_size`` real images, whatever else it holds, so an arm that adds synthetic images sees every real
image exactly as often as the real-only arm and never fewer times. Synthetic images come on top
(``SyntheticMix.ratio`` per real image) with their own loss weight.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffaug.data import to_model_range
from diffaug.evaluation.augment import Augmenter, one_hot
from diffaug.evaluation.data import LabelledImages
from diffaug.progress import progress


@dataclass(frozen=True)
class Recipe:
    steps: int = 1000
    batch_size: int = 32  # real images per batch (synthetic images per batch for a synthetic-only arm)
    lr: float = 2.0e-3
    weight_decay: float = 5.0e-4
    label_smoothing: float = 0.0
    eval_every: int = 100  # validation accuracy every this many steps (and at the end); the best is kept

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError(
                f"steps, batch_size and eval_every must be at least 1, got {self.steps}, {self.batch_size}, "
                f"{self.eval_every}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class SyntheticMix:
    """How synthetic images join real ones: ``ratio`` synthetic images per real image in every batch, and
    the weight of their loss relative to a real image's."""

    ratio: float = 1.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.ratio > 0 or not self.weight > 0:
            raise ValueError(f"synthetic ratio and weight must be positive, got {self.ratio} and {self.weight}")


@dataclass
class FitResult:
    """The classifier (in eval mode, at its best validation step) and how it got there."""

    model: nn.Module
    steps: int
    best_step: int  # the step whose weights ``model`` holds (``steps`` without validation)
    best_val: float | None  # validation accuracy there
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy)
    real_seen: int = 0  # real images drawn over the whole run
    synthetic_seen: int = 0

    @property
    def still_rising(self) -> bool:
        """True when the best validation accuracy came in the last fifth of the budget: a longer run might
        have done better, so the report says the budget may be short."""
        return self.best_val is not None and self.best_step > 0.8 * self.steps


class _IndexStream:
    """Endless indices into a set of ``n`` items, one fresh permutation per pass: every item is drawn once
    before any is drawn twice."""

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


def _soft_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """(B,) cross-entropy against target distributions (B, K), with label smoothing."""
    if smoothing:
        targets = (1 - smoothing) * targets + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def fit_classifier(
    model: nn.Module,
    *,
    real: LabelledImages | None,
    synthetic: LabelledImages | None,
    augment: Augmenter | None,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    mix: SyntheticMix = SyntheticMix(),
    synthetic_targets: Tensor | None = None,
    val: LabelledImages | None = None,
    desc: str = "classifier",
) -> FitResult:
    """Train ``model`` on real and/or synthetic images.

    ``synthetic_targets`` (N_syn, K) replaces the synthetic images' hard labels with distributions (a
    teacher's soft labels). With ``val`` the weights of the best validation accuracy are kept.
    """
    pools = [p for p in (real, synthetic) if p is not None and len(p)]
    if not pools:
        raise ValueError("an arm needs real or synthetic training images; both are empty")
    num_classes = pools[0].num_classes
    generator = torch.Generator().manual_seed(seed)
    parts: list[tuple[LabelledImages, Tensor, int, float, bool]] = []  # (images, targets, per batch, weight, real)
    if real is not None and len(real):
        parts.append((real, one_hot(real.labels, num_classes), recipe.batch_size, 1.0, True))
    if synthetic is not None and len(synthetic):
        targets = one_hot(synthetic.labels, num_classes) if synthetic_targets is None else synthetic_targets.float()
        if targets.shape != (len(synthetic), num_classes):
            raise ValueError(f"synthetic_targets must be ({len(synthetic)}, {num_classes}), got {tuple(targets.shape)}")
        alone = len(parts) == 0
        per_batch = recipe.batch_size if alone else max(1, round(recipe.batch_size * mix.ratio))
        parts.append((synthetic, targets, per_batch, 1.0 if alone else mix.weight, False))
    streams = [_IndexStream(len(p[0]), generator) for p in parts]

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))
    )
    result = FitResult(model, recipe.steps, recipe.steps, None)
    best_state = None
    for step in progress(range(1, recipe.steps + 1), desc=desc, unit="step"):
        losses, weights = [], []
        for (data, targets, per_batch, weight, is_real), stream in zip(parts, streams):
            index = stream.take(per_batch)
            if is_real:
                result.real_seen += len(index)
            else:
                result.synthetic_seen += len(index)
            if augment is not None:
                batch = augment(data.images[index], targets[index], generator)
                x, y = batch.x, batch.y
            else:
                x, y = to_model_range(data.images[index]), targets[index]
            loss = _soft_cross_entropy(model(x.to(device)), y.to(device), recipe.label_smoothing)  # (b,)
            losses.append(weight * loss.sum())
            weights.append(weight * len(index))
        loss = torch.stack(losses).sum() / sum(weights)  # weighted mean over every image of the batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if val is not None and (step % recipe.eval_every == 0 or step == recipe.steps):
            accuracy, _ = evaluate_classifier(model, val, device=device)
            model.train()
            result.history.append((step, accuracy))
            if result.best_val is None or accuracy > result.best_val:  # ties keep the earlier, shorter run
                result.best_val, result.best_step = accuracy, step
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


@torch.no_grad()
def predict_proba(model: nn.Module, images: Tensor, *, device: torch.device, batch_size: int = 512) -> Tensor:
    """(N, K) softmax probabilities of ``images`` (N, C, H, W) uint8, on the CPU."""
    model.to(device).eval()
    return torch.cat(
        [
            F.softmax(model(to_model_range(images[i : i + batch_size]).to(device)), dim=1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, test: LabelledImages, *, device: torch.device, batch_size: int = 512
) -> tuple[float, Tensor]:
    """Top-1 accuracy over ``test`` and per-class accuracy (K,) (NaN for a class with no test image)."""
    predictions = predict_proba(model, test.images, device=device, batch_size=batch_size).argmax(dim=1)  # (N,)
    correct = (predictions == test.labels).to(torch.float64)
    per_class_total = torch.bincount(test.labels, minlength=test.num_classes).to(torch.float64)
    per_class_correct = torch.bincount(test.labels, weights=correct, minlength=test.num_classes)
    per_class = per_class_correct / per_class_total  # 0/0 = NaN for an absent class
    return float(correct.mean()), per_class
