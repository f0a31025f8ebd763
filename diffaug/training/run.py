"""``train(cfg)``: build everything from the config, run Lightning's fit, export the EMA weights.

A run directory holds everything a run writes:

    config.yaml             the resolved config (rewritten on resume)
    checkpoints/last.ckpt   every training.checkpoint_every_n_steps and at the end; plus top-k checkpoints
    hpc_ckpt_N.ckpt         written on SLURM's requeue signal (diffaug.cluster.requeue)
    samples/step_*.png      EMA sample grids, one row per class
                            (FID / precision / recall of EMA samples go to the logs with training.fid_every_n_steps)
    logs/ or wandb/         CSV or W&B logs (wandb_run_id.txt keeps one W&B run across resumes)
    model.safetensors       the final EMA weights with the config, for inference
"""

from __future__ import annotations

import logging
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from diffaug import tracking
from diffaug.build import build_autoencoder, build_training_data, conditional_num_classes
from diffaug.checkpoint import CHECKPOINT_KEY, CheckpointError, read_lightning_checkpoint, save_weights
from diffaug.cluster.requeue import JobRequeued, slurm_training_extras
from diffaug.config import ConfigError, config_hash, save_config, to_dict
from diffaug.config.trainer_args import TRAINER_DEFAULTS
from diffaug.hardware import cuda_math, uses_cuda
from diffaug.sampling.settings import SampleSettings
from diffaug.training.callbacks import SampleGrid, StepProgressBar, Throughput
from diffaug.training.console import quiet_lightning
from diffaug.training.data import DataPositionCallback, ResumableDataModule
from diffaug.training.module import DiffusionModule, NonFiniteLossError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WEIGHTS_FILE = "model.safetensors"
WANDB_ID_FILE = "wandb_run_id.txt"
BEST_MONITOR = "val/loss_ema"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None  # lowest val/loss_ema, or the newest step when there is no validation data
    weights: Path | None  # model.safetensors, written when training reached max_steps
    final_step: int


# ---------------------------------------------------------------- resume


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """None: start fresh; "auto": the run's newest checkpoint (None if it has none); else a file path."""
    if resume is None:
        return None
    if resume == "auto":
        candidates = [*(run_dir / CHECKPOINT_DIR).glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
        if not candidates:
            logger.info("resume=auto: no checkpoint in %s yet, starting from scratch", run_dir)
            return None
        return max(candidates, key=lambda p: (p.stat().st_mtime, p.name == LAST_CHECKPOINT))
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"invalid value for config key 'training.resume': {resume!r}; no such checkpoint "
                          "file (use 'auto' for the newest checkpoint of the run directory)")
    return path


def check_resume_checkpoint(path: Path) -> dict:
    """Fail before fit on a checkpoint that is truncated, holds pickled code or is not diffaug's: Lightning's
    own load would end in a raw traceback. Memory-mapped, so a large checkpoint is not read twice. Returns the
    config the checkpoint was trained with."""
    try:
        return read_lightning_checkpoint(path, mmap=True)[CHECKPOINT_KEY]["config"]
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume (training.resume): {error}") from None


def check_resume_autoencoder(path: Path, saved: dict, cfg: DictConfig) -> None:
    """A latent run continues only on the latents it started on: the same autoencoder (by content hash) or,
    for a pixel run, none. Its weights would otherwise go on learning another space without a word."""
    was = (saved.get("model") or {}).get("autoencoder_sha256")
    now = cfg.model.autoencoder_sha256
    if was != now:
        def name(sha: str | None) -> str:
            return f"autoencoder {sha[:12]}" if sha else "no autoencoder (a pixel model)"

        raise CheckpointError(
            f"cannot resume (training.resume) from {path}: it was trained with {name(was)}, this run has "
            f"{name(now)} (model.autoencoder={cfg.model.autoencoder}); point model.autoencoder at the one it was "
            "trained with, or start a new run (another name or run_dir)")


# ---------------------------------------------------------------- loggers and callbacks


def _wandb_run_id(run_dir: Path) -> str | None:
    """The run's W&B id, created once by rank zero, so a resumed or requeued job continues the same run."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    if rank_zero_only.rank != 0:
        return None
    run_id = secrets.token_hex(4)  # W&B accepts any short [a-z0-9] id
    path.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    log = cfg.logging
    if log.logger == "none":
        return []
    if log.logger == "csv":
        csv = CSVLogger(save_dir=str(run_dir), name="logs")
        csv.log_hyperparams(to_dict(cfg))
        return [csv]
    settings = tracking.init_args(cfg, name=cfg.name, job_type="train", directory=run_dir)
    return [WandbLogger(save_dir=settings.pop("dir"), id=_wandb_run_id(run_dir), resume="allow",
                        config=to_dict(cfg), log_model=bool(log.log_model), **settings)]


class FinalCheckpoint(Callback):
    """Writes last.ckpt at the end when the last step was not a checkpoint step."""

    def __init__(self, *, path: Path, every_n_steps: int):
        self.path = path
        self.every_n_steps = every_n_steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step % self.every_n_steps:
            trainer.save_checkpoint(self.path, weights_only=False)


def build_callbacks(cfg: DictConfig, run_dir: Path, *, has_val: bool, class_names: list[str],
                    with_logger: bool) -> tuple[list[Callback], ModelCheckpoint]:
    """The callbacks, and the top-k checkpoint callback (for the best path)."""
    t = cfg.training
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                           every_n_train_steps=t.checkpoint_every_n_steps)
    if has_val:  # saved after each validation
        best = ModelCheckpoint(dirpath=ckpt_dir, monitor=BEST_MONITOR, mode="min", save_top_k=t.save_top_k,
                               filename="step={step:07d}-val_loss_ema={val/loss_ema:.5f}",
                               auto_insert_metric_name=False)
    else:
        best = ModelCheckpoint(dirpath=ckpt_dir, monitor="step", mode="max", save_top_k=t.save_top_k,
                               every_n_train_steps=t.checkpoint_every_n_steps, filename="step={step:07d}",
                               auto_insert_metric_name=False)
    callbacks: list[Callback] = [
        DataPositionCallback(),
        Throughput(),
        last,
        best,
        FinalCheckpoint(path=ckpt_dir / LAST_CHECKPOINT, every_n_steps=t.checkpoint_every_n_steps),
    ]
    if with_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.logging.progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=max(1, t.log_every_n_steps)))
    if t.sample_every_n_steps:
        callbacks.append(SampleGrid(every_n_steps=t.sample_every_n_steps, out_dir=run_dir / "samples",
                                    class_names=class_names, settings=SampleSettings.from_config(cfg)))
    if t.fid_every_n_steps:
        callbacks.append(_quality_monitor(cfg))
    return callbacks, best


def _quality_monitor(cfg: DictConfig) -> Callback:
    # Imported only for a run that monitors quality, which alone needs the feature extractors and metrics.
    from diffaug.evaluation.configured import build_extractor, evaluation_device, real_split
    from diffaug.training.quality_monitor import QualityMonitor

    q = cfg.eval.quality
    device = evaluation_device(q.device)
    return QualityMonitor(
        every_n_steps=int(cfg.training.fid_every_n_steps), num_samples=int(cfg.training.fid_num_samples),
        reference=real_split(cfg, split=q.reference_split, max_items=q.reference_max_items),
        extractor_factory=lambda: build_extractor(cfg, device), cache_dir=q.cache_dir,
        settings=SampleSettings.from_config(cfg), nearest_k=int(q.nearest_k), kid_subsets=int(q.kid_subsets),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, *, callbacks: list[Callback], loggers: list[Logger],
                  has_val: bool, plugins: Sequence[Any] = ()) -> pl.Trainer:
    t = cfg.training
    val_every = t.val_every_n_steps or t.checkpoint_every_n_steps
    extra = {**TRAINER_DEFAULTS, **OmegaConf.to_container(t.trainer_args)}
    return pl.Trainer(
        default_root_dir=str(run_dir),  # where Lightning looks for hpc_ckpt_N.ckpt on a SLURM restart
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        # Deterministic algorithms on request; else cuDNN autotunes (fixed shapes: a one-off cost). Both set
        # process-wide by Lightning, and put back after the fit by cuda_math.
        deterministic=bool(t.deterministic),
        benchmark=not t.deterministic and uses_cuda(t.accelerator),
        gradient_clip_val=t.grad_clip,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        # Counted in batches when check_val_every_n_epoch is None; a step is accumulate_grad_batches batches.
        val_check_interval=val_every * t.accumulate_grad_batches if has_val else None,
        check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=None if has_val else 0,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=cfg.logging.progress_bar,
        use_distributed_sampler=False,  # ResumableBatchSampler splits the data across ranks itself
        plugins=list(plugins) or None,
        **extra,
    )


# ---------------------------------------------------------------- the run


def _finish_wandb(loggers: list[Logger], succeeded: bool) -> None:
    """Close the W&B run: Lightning leaves it open, and the next train() in this process would reuse it."""
    if any(isinstance(lg, WandbLogger) for lg in loggers) and rank_zero_only.rank == 0:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if succeeded else 1)


def _log_weights(loggers: list[Logger], weights: Path, cfg: DictConfig, *, step: int) -> None:
    """model.safetensors as the run's ``<name>-model`` artifact (the checkpoints are Lightning's log_model)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and cfg.logging.log_model:
            tracking.log_artifact(lg.experiment, tracking.model_artifact(
                weights, run_name=cfg.name, upload=True,
                metadata={"config_hash": config_hash(cfg), "step": step}))


@rank_zero_only
def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    path = run_dir / CONFIG_FILE
    if path.is_file():
        def settings(config: dict) -> str:  # what the run does, whether or not it resumes
            config["training"].pop("resume", None)
            return config_hash(config)

        if settings(OmegaConf.to_container(OmegaConf.load(path), resolve=True)) != settings(to_dict(cfg)):
            logger.warning("%s differs from this run's config; overwriting it (checkpoints keep their own)",
                           path)
    save_config(cfg, path)


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a diffusion model as configured; resumes per ``training.resume``. Returns where things went.

    ``callbacks``: extra Lightning callbacks (custom logging, early stopping) added to the run's own.
    """
    t = cfg.training
    run_dir = Path(cfg.run_dir).resolve()
    resume_path = find_resume_checkpoint(t.resume, run_dir)
    saved = check_resume_checkpoint(resume_path) if resume_path is not None else None
    pl.seed_everything(t.seed, workers=True, verbose=False)
    autoencoder = build_autoencoder(cfg)  # records its hash in cfg, before config.yaml is written
    if saved is not None:
        check_resume_autoencoder(resume_path, saved, cfg)
    inner = build_training_data(cfg, autoencoder)
    inner.setup("fit")  # before the run directory exists: data that cannot train leaves nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, run_dir)

    class_names = list(inner.class_map.names)
    has_val = inner.val_set is not None
    module = DiffusionModule.from_config(cfg, conditional_num_classes(class_names), class_names,
                                         init_weights=resume_path is None)
    loggers = build_loggers(cfg, run_dir)
    own_callbacks, best = build_callbacks(cfg, run_dir, has_val=has_val, class_names=class_names,
                                          with_logger=bool(loggers))
    math = cuda_math(enabled=uses_cuda(t.accelerator), tf32=bool(t.tf32), deterministic=bool(t.deterministic))
    if resume_path is not None:
        logger.info("resuming from %s", resume_path)
    succeeded = False
    try:
        with math, quiet_lightning():
            # Under srun: SLURM ranks, and on SIGUSR1 a checkpoint + requeue (the requeued job resumes from it).
            plugins, slurm_callbacks = slurm_training_extras(requeue=cfg.cluster.requeue, run_dir=run_dir)
            trainer = build_trainer(cfg, run_dir, callbacks=[*own_callbacks, *slurm_callbacks, *callbacks],
                                    loggers=loggers, has_val=has_val, plugins=plugins)
            if resume_path is not None:  # a resumed run's checkpoint folder is not empty, by design
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=ResumableDataModule(inner, seed=t.seed), ckpt_path=resume_path,
                        weights_only=True)
        succeeded = True
    except JobRequeued as preempted:  # a checkpoint is saved; the requeued job continues this W&B run
        _finish_wandb(loggers, succeeded=True)
        preempted.requeue()  # last: the scheduler terminates the job right away
        raise
    except NonFiniteLossError:
        newest = find_resume_checkpoint("auto", run_dir)
        logger.error("training stopped on a non-finite loss; newest checkpoint (last good weights): %s",
                     newest)
        raise
    finally:
        if not succeeded:
            _finish_wandb(loggers, succeeded)

    weights = None
    try:  # the W&B run stays open for the weights' artifact
        if trainer.global_step >= t.max_steps:
            weights = run_dir / WEIGHTS_FILE
            if trainer.is_global_zero:
                save_weights(weights, module.ema.module.state_dict(), config=to_dict(cfg),
                             class_names=class_names)
                _log_weights(loggers, weights, cfg, step=trainer.global_step)
        else:
            logger.warning("training ended at step %d before max_steps=%d; no %s written",
                           trainer.global_step, t.max_steps, WEIGHTS_FILE)
    finally:
        _finish_wandb(loggers, succeeded=True)
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=Path(best.best_model_path) if best.best_model_path else None,
        weights=weights,
        final_step=trainer.global_step,
    )
