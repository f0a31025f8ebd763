"""Preemption without a cluster: SIGUSR1 -> checkpoint at a step boundary -> exact resume; job ids; errors.

The scheduler's part (requeue, restart count, DDP ranks) is exercised in test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from diffaug.cluster.requeue import (
    JobRequeued,
    RequeueOnSignal,
    next_hpc_checkpoint,
    requeue_job,
    slurm_job_id,
    slurm_training_extras,
)
from diffaug.training import find_resume_checkpoint, train
from tests.training_helpers import one_torch_thread, state_of, tiny_config  # noqa: F401


def no_cluster(tmp_path, monkeypatch) -> None:
    """Point SLURM clients at an empty config: they fail at once (a missing file makes them retry for 60 s),
    and no real cluster of this machine is ever touched."""
    conf = tmp_path / "empty-slurm.conf"
    conf.touch()
    monkeypatch.setenv("SLURM_CONF", str(conf))


class SignalAtBatch(pl.Callback):
    """Sends SIGUSR1 to this process at the end of batch ``batch`` (counted over the whole run)."""

    def __init__(self, batch: int):
        self.batch = batch
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


CASES = {
    # 32 items, batches of 8: 4 steps per epoch; the signal after batch 3 lands at step 3, mid-epoch.
    "plain": ([], 3, 3),
    # Two batches per step: after batch 5 the third step is half done, so the checkpoint waits for step 3.
    "accumulated": (["data.batch_size=4", "training.accumulate_grad_batches=2"], 5, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_signal_saves_at_a_step_boundary_and_the_resumed_run_is_exact(tmp_path, monkeypatch, case):
    overrides, signal_batch, expected_step = CASES[case]
    no_cluster(tmp_path, monkeypatch)  # scontrol fails, and train() reports the saved checkpoint
    straight = train(tiny_config(tmp_path / "straight", *overrides))

    run_dir = tmp_path / "preempted"
    requeue = RequeueOnSignal(job_id="1", folder=run_dir)
    with pytest.raises(RuntimeError, match="could not requeue the job") as failure:
        train(tiny_config(run_dir, *overrides), callbacks=[requeue, SignalAtBatch(signal_batch)])
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert str(hpc) in str(failure.value) and "resumes from that checkpoint" in str(failure.value)
    assert torch.load(hpc, weights_only=True)["global_step"] == expected_step
    assert signal.getsignal(signal.SIGUSR1) is not requeue._on_signal  # handler restored after the exception

    assert find_resume_checkpoint("auto", run_dir) == hpc
    resumed = train(tiny_config(run_dir, *overrides, "training.resume=auto"))
    assert straight.final_step == resumed.final_step == 8
    for prefix in ("denoiser.", "ema."):
        a, b = state_of(straight.last_checkpoint, prefix), state_of(resumed.last_checkpoint, prefix)
        assert a.keys() == b.keys()
        assert not [k for k in a if not torch.equal(a[k], b[k])], prefix


def test_job_requeued_exits_quietly_and_only_rank_zero_requeues(tmp_path):
    stop = JobRequeued(job_id=None, checkpoint=tmp_path / "hpc_ckpt_1.ckpt", step=7)
    assert isinstance(stop, SystemExit) and stop.code == 0
    stop.requeue()  # not rank 0: nothing to do, no scontrol call
    assert "step 7" in str(stop) and "hpc_ckpt_1.ckpt" in str(stop)


def test_job_ids():
    assert slurm_job_id({"SLURM_JOB_ID": "41"}) == "41"
    # An array task is requeued as <array job>_<task>, not by its own job id.
    array_task = {"SLURM_JOB_ID": "45", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_job_id(array_task) == "41_3"
    assert slurm_job_id({}) is None


def test_requeue_refuses_what_is_not_a_job_id():
    for bad in ("", "12; rm -rf /", "abc", "12_"):
        with pytest.raises(ValueError, match="not a SLURM job id"):
            requeue_job(bad)


def test_requeue_failure_names_the_reason(tmp_path, monkeypatch):
    no_cluster(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="scontrol requeue 123"):
        requeue_job("123")


def test_hpc_checkpoints_are_numbered_after_the_highest(tmp_path):
    assert next_hpc_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_1.ckpt", "hpc_ckpt_7.ckpt", "hpc_ckpt_x.ckpt", "hpc_ckpt_9.ckpt.tmp"):
        (tmp_path / name).touch()
    assert next_hpc_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_8.ckpt"


SRUN_ENV = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "x",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


@pytest.mark.parametrize("requeue", [True, False])
def test_under_srun_lightnings_slurm_environment_without_in_handler_requeue(tmp_path, monkeypatch, requeue):
    for key, value in SRUN_ENV.items():
        monkeypatch.setenv(key, value)
    plugins, callbacks = slurm_training_extras(requeue=requeue, run_dir=tmp_path)
    (environment,) = plugins
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    if requeue:
        (callback,) = callbacks
        assert isinstance(callback, RequeueOnSignal)
        assert callback.job_id == "77" and callback.folder == tmp_path
    else:
        assert callbacks == []


def test_outside_srun_nothing_changes(tmp_path, monkeypatch):
    for key in SRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert slurm_training_extras(requeue=True, run_dir=tmp_path) == ([], [])
    # Lightning takes jobs named "bash" or "interactive" for shells and ignores SLURM there; so do we.
    for key, value in {**SRUN_ENV, "SLURM_JOB_NAME": "interactive"}.items():
        monkeypatch.setenv(key, value)
    assert slurm_training_extras(requeue=True, run_dir=tmp_path) == ([], [])
