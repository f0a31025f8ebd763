"""Preemption on SLURM: on SIGUSR1, save a checkpoint at a step boundary, requeue the job, stop.

The requeued job starts the same command again; ``train`` resumes from the newest checkpoint, which is the
one saved here (``hpc_ckpt_N.ckpt`` in the run directory, the name Lightning's own SLURM resume looks for).

Lightning's built-in SLURM auto-requeue saves that checkpoint inside the signal handler, that is wherever the
main thread happens to be: between the optimizer step and the EMA update, or before the data position moves
on, so the checkpoint need not describe one consistent step; under DDP each rank enters the checkpoint's
barrier from a different point of its step. Here the handler only raises a flag. At the end of the next
optimizer step all ranks agree on it (one tiny all-reduce per step), save together, and stop by raising
:class:`JobRequeued`. ``train`` closes its loggers and then rank 0 requeues the job: ``scontrol requeue``
terminates the job at once, so it comes last, when nothing is left to write.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, Checkpoint

logger = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1
HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class JobRequeued(SystemExit):
    """Raised on every rank once the preemption checkpoint is saved; call :meth:`requeue` when the process has
    nothing left to write. A ``SystemExit`` with status 0: uncaught, the process ends quietly.
    """

    def __init__(self, *, job_id: str | None, checkpoint: Path, step: int):
        super().__init__(0)
        self.job_id = job_id  # None on all ranks but rank 0: one requeue per job
        self.checkpoint = checkpoint
        self.step = step

    def requeue(self) -> None:
        """Requeue the job (rank 0); the scheduler then terminates this job and starts it again."""
        if self.job_id is None:
            return
        logger.info("requeueing SLURM job %s; it resumes from %s", self.job_id, self.checkpoint)
        try:
            requeue_job(self.job_id)
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(f"saved {self.checkpoint} at step {self.step} but could not requeue the job: "
                               f"{error}. Submit it again: it resumes from that checkpoint "
                               "(training.resume=auto)") from None

    def __str__(self) -> str:
        return f"stopped at step {self.step} for a SLURM requeue; resumes from {self.checkpoint}"


def slurm_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The id that ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else the job id."""
    env = os.environ if env is None else env
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or None


def requeue_job(job_id: str) -> None:
    """``scontrol requeue JOB``: the scheduler stops the job and queues it again (same id, same script)."""
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        raise ValueError(f"not a SLURM job id: {job_id!r} (expected digits, or <array job>_<task> digits)")
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"could not run 'scontrol requeue {job_id}': {error}") from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise RuntimeError(f"'scontrol requeue {job_id}' failed: {reason}")


def next_hpc_checkpoint(folder: Path) -> Path:
    """``folder/hpc_ckpt_<N+1>.ckpt`` after the highest N there (Lightning's naming for SLURM checkpoints)."""
    matches = (HPC_CHECKPOINT.fullmatch(p.name) for p in folder.glob("hpc_ckpt_*.ckpt"))
    numbers = [int(m.group(1)) for m in matches if m]
    return folder / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class RequeueOnSignal(Checkpoint):
    """On ``signum``: at the end of the next optimizer step, save ``hpc_ckpt_N.ckpt`` into ``folder`` on all
    ranks together and raise :class:`JobRequeued` on every rank (rank 0's exception requeues ``job_id``).

    A ``Checkpoint`` callback, so Lightning runs it after the ``ModelCheckpoint`` callbacks of the same step:
    a step that is due a regular checkpoint gets it before the job stops.
    """

    def __init__(self, *, job_id: str, folder: Path, signum: signal.Signals = REQUEUE_SIGNAL):
        self.job_id = job_id
        self.folder = Path(folder)
        self.signum = signum
        self.signalled = False
        self._previous_handler: Any = None
        self._installed = False
        self._last_step = -1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: anything more would run in the middle of whatever the main thread is doing.
        self.signalled = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Installed before the data loaders start, so forked loader workers inherit this harmless handler
        # (the scheduler signals every process of the job step, and the default action would kill them).
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            self._installed = True

    def _restore_handler(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous_handler)
            self._installed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._restore_handler()  # Lightning skips teardown hooks when fit raises

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside gradient accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        path = Path(trainer.strategy.broadcast(str(next_hpc_checkpoint(self.folder))))
        trainer.save_checkpoint(path)  # all ranks; ends with a barrier, so the file is complete after it
        if trainer.is_global_zero:
            logger.info("requeue signal: saved step %d to %s", trainer.global_step, path)
        raise JobRequeued(job_id=self.job_id if trainer.is_global_zero else None, checkpoint=path,
                          step=trainer.global_step)


def slurm_training_extras(*, requeue: bool, run_dir: Path) -> tuple[list[Any], list[Callback]]:
    """Trainer plugins and callbacks for a run that ``srun`` launched; ``([], [])`` anywhere else.

    Lightning's SLURM environment supplies ranks and the rendezvous address; its in-handler auto-requeue is
    switched off in favour of :class:`RequeueOnSignal` (when ``requeue``).
    """
    if not SLURMEnvironment.detect():
        return [], []
    job_id = slurm_job_id()
    callbacks: list[Callback] = []
    if requeue and job_id is not None:
        callbacks.append(RequeueOnSignal(job_id=job_id, folder=run_dir))
    return [SLURMEnvironment(auto_requeue=False)], callbacks
