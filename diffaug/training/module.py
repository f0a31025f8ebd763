"""The LightningModule: one denoising loss per batch, AdamW, EMA; Lightning owns the loop.

Given a denoiser and an objective, it adds only what training needs around them: classifier-free-guidance
label dropout, the optimizer and learning-rate schedule, the EMA of the weights, non-finite loss handling,
validation with and without the EMA, and metrics (loss per noise-level bucket). Gradient clipping,
accumulation and mixed precision are the Trainer's settings.

Randomness of a step (t, noise, label dropout, dropout inside the net) comes from seeds derived from
(seed, rank, global_step, batch_idx), not from a global stream, so a resumed run repeats exactly the steps
an uninterrupted run would take.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import Tensor

from diffaug.build import conditional_num_classes
from diffaug.checkpoint import (CHECKPOINT_KEY, CheckpointError, load_state_strictly,
                                read_lightning_checkpoint)
from diffaug.config import config_from_dict
from diffaug.diffusion.denoiser import Denoiser
from diffaug.diffusion.losses import Objective, bucket_index, bucket_names, drop_labels
from diffaug.nets.autoencoder import FrozenAutoencoder
from diffaug.training.assemble import module_arguments
from diffaug.training.data import mix_seed
from diffaug.training.ema import EMA
from diffaug.training.schedule import LRSchedule, build_lr_scheduler

logger = logging.getLogger(__name__)

OnNonFinite = Literal["stop", "skip"]
NUM_BUCKETS = 4
# Streams of mix_seed, so the per-step seeds of different uses never coincide.
_TRAIN_STREAM, _DROPOUT_STREAM, _VAL_STREAM, _LATENT_STREAM, _VAL_LATENT_STREAM = 0, 1, 2, 3, 4
LatentInputs = Literal["pixels", "moments"]


def scales_gradients(trainer: pl.Trainer | None) -> bool:
    """Whether the trainer's precision plugin multiplies the loss by a gradient scale (16-mixed on a GPU)."""
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss (training.on_nonfinite="stop")."""


class DiffusionModule(pl.LightningModule):
    """Trains ``denoiser`` on ``objective``; ``self.ema`` holds the moving average used for inference."""

    def __init__(
        self,
        *,
        denoiser: Denoiser,
        objective: Objective,
        label_dropout: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        max_steps: int = 1000,
        lr_schedule: LRSchedule = "constant",
        min_lr_ratio: float = 0.1,
        ema_halflife_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        on_nonfinite: OnNonFinite = "stop",
        seed: int = 0,
        compile: bool = False,
        metadata: dict[str, Any] | None = None,
        autoencoder: FrozenAutoencoder | None = None,
        latent_inputs: LatentInputs = "pixels",
    ):
        super().__init__()
        if latent_inputs not in get_args(LatentInputs):
            raise ValueError(f"latent_inputs={latent_inputs!r} is not valid; choose one of {get_args(LatentInputs)}")
        if on_nonfinite not in get_args(OnNonFinite):
            raise ValueError(
                f"on_nonfinite={on_nonfinite!r} is not valid; choose one of {get_args(OnNonFinite)}"
            )
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.denoiser = denoiser
        self.objective = objective
        self.label_dropout = label_dropout
        self.optimizer_settings = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas))
        self.schedule_settings = dict(warmup_steps=warmup_steps, max_steps=max_steps, schedule=lr_schedule,
                                      min_lr_ratio=min_lr_ratio)
        self.on_nonfinite: OnNonFinite = on_nonfinite
        self.seed = seed
        self.metadata = metadata or {}
        self.ema = EMA(denoiser, halflife_kimg=ema_halflife_kimg, rampup=ema_rampup)
        # A plain object, not a submodule: frozen, outside the parameters, optimiser, EMA and state dict.
        self.autoencoder = autoencoder
        self.latent_inputs: LatentInputs = latent_inputs
        if compile:
            # In place, so parameter names (and checkpoints) are the same as without compilation.
            self.denoiser.net.compile()
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.int64))
        # Per-rank loss sums / counts per noise-level bucket since the last log step. Plain attributes, not
        # buffers: DDP would overwrite buffers with rank zero's at every forward.
        self._bucket_sum: Tensor | None = None
        self._bucket_count: Tensor | None = None
        self._skip_this_step = False  # a micro-batch of this optimizer step had a non-finite loss
        self._images_this_step = 0  # images in the micro-batches of this optimizer step, this rank
        self._stepped = False  # an optimizer step ran since the last on_train_batch_end

    # ------------------------------------------------------------------ training

    def _generator(self, stream: int, *parts: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(mix_seed(self.seed, stream, *parts))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout and any other draw inside the network come from the global stream: seed it per step.
        step_seed = mix_seed(self.seed, _DROPOUT_STREAM, self.global_rank, self.global_step, batch_idx)
        torch.manual_seed(step_seed)

    def to_latents(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """What the denoiser trains on: ``x`` itself for a pixel model; for a latent model a posterior sample
        of the autoencoder, from images (N, C, H, W) in [-1, 1] (any augmentation already applied) or from
        cached moments (N, 2 Cl, h, w)."""
        if self.autoencoder is None:
            return x
        self.autoencoder.to(x.device)
        if self.latent_inputs == "moments":
            mean, logvar = x.float().chunk(2, dim=1)  # (N, Cl, h, w) each
        else:
            mean, logvar = self.autoencoder.moments(x)
        return self.autoencoder.sample_latents(mean, logvar, generator).to(x.device)

    def denoising_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> tuple[Tensor, Tensor]:
        """Per-sample loss (N,) and times t (N,) of a training batch, with this step's seeds and label
        dropout: the computation of ``training_step`` without its bookkeeping (benchmarks time it alone)."""
        x, labels = batch  # (N, C, H, W) in [-1, 1] (or latent moments), (N,)
        x0 = self.to_latents(x, self._generator(_LATENT_STREAM, self.global_rank, self.global_step, batch_idx))
        generator = self._generator(_TRAIN_STREAM, self.global_rank, self.global_step, batch_idx)
        class_labels = None
        if self.denoiser.conditional:
            class_labels = drop_labels(labels, self.label_dropout, self.denoiser.null_class, generator)
        return self.objective.loss(self.denoiser, x0, class_labels, generator)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0 = batch[0]
        per_sample, t = self.denoising_loss(batch, batch_idx)  # (N,), (N,)
        loss = per_sample.mean()
        if self._any_rank(~torch.isfinite(loss)):
            self._handle_nonfinite(loss, batch_idx)
        else:
            self._accumulate_buckets(per_sample.detach(), t)
        self._images_this_step += x0.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=x0.shape[0])
        return loss

    def _any_rank(self, flag: Tensor) -> bool:
        """True when ``flag`` holds on any rank, so that every rank takes the same branch."""
        flag = flag.to(torch.float32)
        if self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="max")
        return bool(flag > 0)

    def _handle_nonfinite(self, loss: Tensor, batch_idx: int) -> None:
        where = f"step {self.global_step} (batch {batch_idx} of epoch {self.current_epoch})"
        if self.on_nonfinite == "stop":
            # Raised before backward: no weight was touched, the newest checkpoint holds good weights.
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at {where}; stopping. Lower training.lr, set "
                "training.grad_clip, or pass training.on_nonfinite=skip to skip such steps"
            )
        logger.warning("non-finite training loss (%s) at %s: skipping this optimizer step",
                       loss.item(), where)
        self._skip_this_step = True  # gradients are dropped in on_before_optimizer_step

    def _accumulate_buckets(self, per_sample: Tensor, t: Tensor) -> None:
        index = bucket_index(t, self.denoiser.process, NUM_BUCKETS)  # (N,)
        if self._bucket_sum is None:
            self._bucket_sum = torch.zeros(NUM_BUCKETS, dtype=torch.float64, device=per_sample.device)
            self._bucket_count = torch.zeros(NUM_BUCKETS, dtype=torch.float64, device=per_sample.device)
        self._bucket_sum.index_add_(0, index, per_sample.to(torch.float64))
        self._bucket_count.index_add_(0, index, torch.ones_like(per_sample, dtype=torch.float64))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_this_step:
            # No gradient -> AdamW leaves weights and moments untouched (and clipping sees nothing).
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Called once per optimizer step (after all accumulated micro-batches).
        if self._skip_this_step:
            self.skipped_steps += 1
        else:
            self.ema.update(self.denoiser, batch_images=self._images_this_step * self.trainer.world_size)
        self._skip_this_step = False
        self._images_this_step = 0
        self._stepped = True

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After an optimizer step that lands on a logging step, log the bucket means since the last one.
        if not self._stepped:
            return
        self._stepped = False
        if self.global_step % self.trainer.log_every_n_steps or self._bucket_sum is None:
            return
        sums, counts = self._bucket_sum, self._bucket_count
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        for name, total, count in zip(bucket_names(NUM_BUCKETS), sums.tolist(), counts.tolist()):
            if count > 0:
                self.log(f"train/loss_{name}", total / count, on_step=True, on_epoch=False)
        self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, on_epoch=False)
        self._bucket_sum.zero_()
        self._bucket_count.zero_()

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, labels = batch
        class_labels = labels if self.denoiser.conditional else None
        n = x.shape[0]
        x0 = self.to_latents(x, self._generator(_VAL_LATENT_STREAM, self.global_rank, batch_idx))
        for name, model in (("val/loss", self.denoiser), ("val/loss_ema", self.ema.module)):
            # The same t and noise at every validation, so the curve shows the model, not the draw.
            generator = self._generator(_VAL_STREAM, self.global_rank, batch_idx)
            per_sample, _ = self.objective.loss(model, x0, class_labels, generator)
            self.log(name, per_sample.mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n,
                     prog_bar=name == "val/loss_ema")

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self, *, scaled_gradients: bool | None = None) -> dict[str, Any]:
        """AdamW and the learning-rate schedule; ``scaled_gradients`` (default: whether the trainer uses a
        gradient scaler) picks the AdamW implementation, see ``_adamw``."""
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: training.freeze covers the whole network")
        if scaled_gradients is None:
            scaled_gradients = scales_gradients(self._trainer)
        optimizer = self._adamw(params, fused=not scaled_gradients)
        scheduler = build_lr_scheduler(optimizer, **self.schedule_settings)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def _adamw(self, params: list[Tensor], *, fused: bool) -> torch.optim.AdamW:
        # torch's fused AdamW updates every parameter in one kernel (CUDA, and CPU since torch 2.4): 3-4x
        # faster steps than the foreach implementation on a CPU (see benchmarks/). Not when a gradient scaler
        # is in use (16-mixed on a GPU): fused AdamW unscales inside its step, after clipping would have
        # clipped the still-scaled gradients, and Lightning refuses that combination (Lightning #21435).
        if fused:
            try:
                return torch.optim.AdamW(params, fused=True, **self.optimizer_settings)
            except (RuntimeError, TypeError):  # an older torch, or a device or dtype without the kernel
                pass
        return torch.optim.AdamW(params, foreach=True, **self.optimizer_settings)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's autocast plugin refuses to clip for an optimizer that unscales itself (fused AdamW) even
        # without a gradient scaler, as under bf16-mixed, where the gradients are the true ones (Lightning
        # #21435): clip them here, as its plugin would.
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugin = self.trainer.precision_plugin
        if (gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None
                and optimizer.defaults.get("fused")):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ construction and checkpoints

    @classmethod
    def from_config(cls, cfg: DictConfig, num_classes: int | None, class_names: Sequence[str], *,
                    init_weights: bool = True) -> DiffusionModule:
        """The module of a run. ``init_weights=False`` skips ``training.init_from`` (a resume, whose
        checkpoint brings the weights), but still applies LoRA so the parameter names match."""
        return cls(**module_arguments(cfg, num_classes, class_names, init_weights=init_weights))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.metadata

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike,
                             map_location: str | torch.device = "cpu", **unused: Any) -> DiffusionModule:
        """The module of a diffaug ``.ckpt``, networks included, from the file alone.

        Lightning's own version calls ``__init__`` with ``checkpoint["hyper_parameters"]``; this module's
        networks are built from the resolved config the checkpoint carries (``checkpoint["diffaug"]``)
        instead, so nothing but tensors and plain data is unpickled (``weights_only=True``), and the live
        weights, the EMA and its image count are loaded strictly. For inference alone,
        :func:`diffaug.inference.load_for_inference` loads the EMA denoiser without the training wrapper.
        """
        if unused:
            raise TypeError(f"DiffusionModule.load_from_checkpoint takes no {sorted(unused)}: the networks and "
                            "settings come from the config stored in the checkpoint")
        if str(checkpoint_path).endswith(".safetensors"):
            raise CheckpointError(f"{checkpoint_path} holds only the EMA weights; load a run's .ckpt here, or "
                                  "this file with diffaug.inference.load_for_inference")
        checkpoint = read_lightning_checkpoint(checkpoint_path, map_location)
        meta = checkpoint[CHECKPOINT_KEY]
        class_names = list(meta["class_names"])
        module = cls.from_config(config_from_dict(meta["config"]), conditional_num_classes(class_names),
                                 class_names, init_weights=False)
        load_state_strictly(module, checkpoint["state_dict"], source=str(checkpoint_path))
        return module.to(map_location)
