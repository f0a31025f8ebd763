"""FID / KID / precision / recall of EMA samples during training, on a schedule (``training.fid_every_n_steps``).

The validation loss says little about sample quality; this callback measures it on the way, with the
same feature extractor and reference data as ``diffaug eval fid`` and the same seeds every time, so the
curve shows the model changing, not the noise. Rank zero samples and scores; the other ranks wait.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from diffaug.augset.plan import WorkItem
from diffaug.augset.seeds import derive_seed
from diffaug.evaluation.features import FeatureExtractor, reference_features
from diffaug.evaluation.manifold import precision_recall
from diffaug.evaluation.quality import fid_kid
from diffaug.sampling.generate import draw
from diffaug.sampling.settings import SampleSettings
from diffaug.training.ema import evaluating

logger = logging.getLogger(__name__)


def items_in_turn(n: int, class_names: Sequence[str], settings: SampleSettings) -> list[WorkItem]:
    """``n`` items taking the classes in turn: item i is image i // K of class i % K (K classes), with that
    image's seed in an export with the same settings."""
    k, guidance = len(class_names), settings.guidance(class_names)
    return [WorkItem(class_index=i % k, index=i // k, seed=derive_seed(settings.seed, i % k, i // k),
                     guidance=guidance[i % k]) for i in range(n)]


@torch.no_grad()
def quality_samples(denoiser: torch.nn.Module, *, n: int, class_names: Sequence[str],
                    settings: SampleSettings, device: torch.device,
                    autoencoder: Any = None) -> tuple[Tensor, Tensor]:
    """``n`` uint8 samples (N, C, H, W), the classes in turn, drawn as ``diffaug sample`` draws them (decoded
    by a latent model's ``autoencoder``); and their labels (N,)."""
    items = items_in_turn(n, class_names, settings)
    with evaluating(denoiser):
        images = draw(denoiser, denoiser.process, items, settings=settings, device=device,
                      autoencoder=autoencoder)
    return images, torch.tensor([it.class_index for it in items], dtype=torch.int64)


class QualityMonitor(pl.Callback):
    """Every ``every_n_steps`` steps: ``num_samples`` EMA samples scored against ``reference`` real images.

    ``extractor_factory()`` builds the feature extractor on first use (a domain classifier may need training;
    it is cached on disk by data hash). Logs ``quality/fid``, ``quality/kid``, ``quality/precision``,
    ``quality/recall``, ``quality/density``, ``quality/coverage`` to every logger at the step.
    """

    def __init__(self, *, every_n_steps: int, num_samples: int, reference, extractor_factory, cache_dir: str,
                 settings: SampleSettings, nearest_k: int = 3, kid_subsets: int = 50):
        if every_n_steps < 1 or num_samples < 2:
            raise ValueError(f"need every_n_steps >= 1 and num_samples >= 2, got {every_n_steps} and {num_samples}")
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.reference, self.extractor_factory, self.cache_dir = reference, extractor_factory, cache_dir
        self.settings = settings
        self.nearest_k, self.kid_subsets = nearest_k, kid_subsets
        self._extractor: FeatureExtractor | None = None
        self._real_features: Tensor | None = None
        self._last_step = -1

    def _reference(self) -> tuple[FeatureExtractor, Tensor]:
        if self._extractor is None:
            self._extractor = self.extractor_factory()
            self._real_features = reference_features(self._extractor, self.reference, cache_dir=self.cache_dir)
        return self._extractor, self._real_features

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        extractor, real_features = self._reference()
        denoiser = pl_module.ema.module
        images, _ = quality_samples(denoiser, n=self.num_samples, class_names=self.reference.class_map.names,
                                    settings=self.settings, device=pl_module.device,
                                    autoencoder=getattr(pl_module, "autoencoder", None))
        fake_features = extractor(images)  # (N, D)
        metrics = fid_kid(real_features, fake_features, kid_subsets=self.kid_subsets, kid_subset_size=1000)
        metrics |= precision_recall(real_features, fake_features, k=self.nearest_k)
        return {f"quality/{key}": float(metrics[key])
                for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage")}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # (several micro-batches share a step under gradient accumulation)
        self._last_step = step
        if trainer.is_global_zero:
            metrics = self.measure(pl_module)
            for lightning_logger in trainer.loggers:
                lightning_logger.log_metrics(metrics, step=step)
            logger.info("step %d: FID %.3f, precision %.3f, recall %.3f", step, metrics["quality/fid"],
                        metrics["quality/precision"], metrics["quality/recall"])
        trainer.strategy.barrier("quality_monitor")
