"""Training callbacks: EMA sample grids, throughput and memory, a progress bar counted in steps."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger

from diffaug.sampling.grid import class_grid, write_grid
from diffaug.sampling.settings import SampleSettings
from diffaug.training.ema import evaluating

logger = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """Every ``every_n_steps`` steps, EMA samples with one row per class, saved as PNG (and sent to W&B).

    The same seeds every time, so successive grids show the model changing, not the noise; drawn as
    ``diffaug sample`` draws them, so a grid equals the one ``diffaug sample`` makes from the weights of
    that step with the same ``sampling.*`` settings.
    """

    def __init__(self, *, every_n_steps: int, out_dir: str | Path, class_names: list[str],
                 settings: SampleSettings, per_class: int = 8):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.settings = settings
        self.per_class = per_class
        self._last_step = -1

    @torch.no_grad()
    def make_grid(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """(C, H', W') uint8 grid: row k holds ``per_class`` samples of class k."""
        denoiser = pl_module.ema.module
        with evaluating(denoiser):
            return class_grid(denoiser, denoiser.process, self.class_names, per_class=self.per_class,
                              settings=self.settings, device=pl_module.device,
                              autoencoder=getattr(pl_module, "autoencoder", None))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps or not trainer.is_global_zero:
            return  # (several micro-batches share a step under gradient accumulation)
        self._last_step = step
        path = write_grid(self.out_dir / f"step_{step:07d}.png", self.make_grid(pl_module))
        for lightning_logger in trainer.loggers:
            if isinstance(lightning_logger, WandbLogger):
                lightning_logger.log_image("samples", [str(path)], step=step,
                                           caption=[f"rows: {', '.join(self.class_names)}"])
        logger.info("sample grid at step %d: %s", step, path)


class Throughput(pl.Callback):
    """Logs images/s over all ranks (shown in the progress bar) and, on CUDA, peak GPU memory."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._images = 0
        self._last_step = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += batch[0].shape[0] * trainer.world_size
        step = trainer.global_step
        if step % trainer.log_every_n_steps or step == self._last_step or self._start is None:
            return
        self._last_step = step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            pl_module.log("train/images_per_sec", self._images / elapsed, prog_bar=True, on_step=True)
        if pl_module.device.type == "cuda":
            pl_module.log("train/gpu_mem_gb", torch.cuda.max_memory_allocated(pl_module.device) / 2**30,
                          on_step=True)
        self._start, self._images = time.perf_counter(), 0


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run, counted in optimizer steps up to max_steps (epochs are arbitrary here)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.set_description("step")
        bar.n = trainer.global_step
        bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if self._should_update(step, trainer.max_steps) and bar.n != step:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # keep the bar open across epochs
