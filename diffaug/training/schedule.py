"""Learning-rate schedule: linear warm-up, then constant or cosine decay to ``min_lr_ratio`` x the peak."""

from __future__ import annotations

import math
from typing import Literal, get_args

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

LRSchedule = Literal["constant", "cosine"]


def lr_factor(
    step: int, *, warmup_steps: int, max_steps: int, schedule: LRSchedule, min_lr_ratio: float
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        # Step 0 already trains at 1/warmup of the peak rather than at zero, which would waste a step.
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(max_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def build_lr_scheduler(
    optimizer: Optimizer, *, warmup_steps: int, max_steps: int, schedule: LRSchedule, min_lr_ratio: float
) -> LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`.

    The factor is a plain function, which ``LambdaLR.state_dict`` does not save: a resumed run follows the
    schedule of its current config (e.g. a raised max_steps stretches the cosine), at the saved step.
    """
    if schedule not in get_args(LRSchedule):
        choices = ", ".join(get_args(LRSchedule))
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of: {choices}")
    if warmup_steps < 0 or max_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps} and {max_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, max_steps=max_steps, schedule=schedule,
                         min_lr_ratio=min_lr_ratio)

    return LambdaLR(optimizer, lr_lambda=factor)
