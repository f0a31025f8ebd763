"""Training: the LightningModule, EMA, learning-rate schedule, resumable data order, and ``train(cfg)``."""

from diffaug.training.ema import EMA, ema_beta
from diffaug.training.module import DiffusionModule, NonFiniteLossError
from diffaug.training.run import TrainResult, find_resume_checkpoint, train
from diffaug.training.schedule import build_lr_scheduler, lr_factor

__all__ = [
    "DiffusionModule",
    "EMA",
    "NonFiniteLossError",
    "TrainResult",
    "build_lr_scheduler",
    "ema_beta",
    "find_resume_checkpoint",
    "lr_factor",
    "train",
]
