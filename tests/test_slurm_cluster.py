"""The project's sbatch scripts on a real single-node SLURM cluster (slurm/local-cluster/): preemption with
``scancel --signal=USR1``, requeue, exact resume under DDP (2 CPU tasks, gloo), and an export array with one
task preempted and one killed and requeued by hand.

Needs root and Debian's slurmctld + slurmd (scripts/setup.sh installs them); skipped, with the reason, when
the cluster cannot start here. Every daemon the test starts is stopped by its pid at the end.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffaug.cluster.cli import slurm_main
from tests.training_helpers import TINY_NET

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.ddp]

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "slurm" / "local-cluster"
DAEMONS = ("munged", "slurmctld", "slurmd")
JOB_TIMEOUT_S = 300  # generous: the machine is shared; nothing is asserted about time

# 80 DDP steps of a tiny UNet on 8x8 digits, two CPU ranks; checkpoints every 20 steps. W&B offline.
TRAIN_OVERRIDES = [
    "data.resolution=8", "data.batch_size=8", "data.max_items=64", TINY_NET,
    "training.max_steps=80", "training.warmup_steps=2", "training.checkpoint_every_n_steps=20",
    "training.log_every_n_steps=10", "training.ema_halflife_kimg=0.05",
    "training.accelerator=cpu", "training.devices=2", "training.strategy=ddp",
    "logging.logger=wandb", "logging.mode=offline", "logging.progress_bar=false",
    "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.time=20",
]
EXPORT_OVERRIDES = ["export.per_class=30", "sampling.sampler=ddim", "sampling.steps=20",
                    "sampling.batch_size=8", "logging.progress_bar=false"]


def alive(pid: int) -> bool:
    """Running and not a zombie (killed processes here can stay zombies until PID 1 reaps them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Cluster:
    folder: Path
    logs: Path

    def run(self, *command: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "--oneliner", job_id)))

    def log(self, pattern: str) -> str:
        return "\n".join(p.read_text() for p in sorted(self.logs.glob(pattern)))

    def submit(self, *args: str) -> str:
        """``diffaug slurm submit ARGS``; returns the job id it prints."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert slurm_main(["slurm", "submit", *args, "--log-dir", str(self.logs)]) == 0
        assert re.fullmatch(r"\d+\n", printed.getvalue()), printed.getvalue()
        return printed.getvalue().strip()

    def wait(self, condition: Callable[[], bool], what: str, log_pattern: str) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; log:\n{self.log(log_pattern)[-4000:]}")
            time.sleep(0.1)

    def wait_finished(self, job_id: str, log_pattern: str) -> dict[str, str]:
        unfinished = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED")
        self.wait(lambda: self.job(job_id)["JobState"] not in unfinished, f"job {job_id} to finish",
                  log_pattern)
        state = self.job(job_id)
        assert state["JobState"] == "COMPLETED", f"job {job_id}: {state}\n{self.log(log_pattern)[-4000:]}"
        return state


@pytest.fixture(scope="module")
def cluster():
    # Not under pytest's 0700 temp folders: munged needs every folder above its socket enterable by all.
    folder = Path(tempfile.mkdtemp(prefix="diffaug-slurm-"))
    started = subprocess.run(["bash", str(LOCAL_CLUSTER / "start.sh"), str(folder)], capture_output=True,
                             text=True, timeout=120)
    if started.returncode == 3:  # not root, or Slurm / munge not installed
        folder.rmdir()
        pytest.skip(f"no local SLURM cluster: {started.stderr.strip()}")
    pids = {d: int(p.read_text()) for d in DAEMONS if (p := folder / "run" / f"{d}.pid").is_file()}
    logs = Path(tempfile.mkdtemp(prefix="diffaug-slurm-logs-"))
    try:
        assert started.returncode == 0, started.stderr
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(folder / "slurm.conf"))  # for sbatch here; the jobs inherit it
            patch.setenv("WANDB_MODE", "offline")
            patch.setenv("WANDB_SILENT", "true")
            patch.setenv("OMP_NUM_THREADS", "1")
            yield Cluster(folder, logs)
    finally:
        stopped = subprocess.run(["bash", str(LOCAL_CLUSTER / "stop.sh"), str(folder)], capture_output=True,
                                 text=True, timeout=120)
        still_running = [f"{d} (pid {pid})" for d, pid in pids.items() if alive(pid)]
        assert stopped.returncode == 0 and not still_running and not folder.exists(), (
            f"local cluster not stopped: {stopped.stderr} {still_running}")
        subprocess.run(["rm", "-rf", str(logs)], check=True)


# ---------------------------------------------------------------- training: preempt, requeue, resume


@pytest.fixture(scope="module")
def training(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-train")
    preempted_dir, straight_dir = root / "preempted", root / "straight"
    preempted = cluster.submit("train", f"run_dir={preempted_dir}", "name=preempted",
                               *TRAIN_OVERRIDES)
    # Signal once the first checkpoint (step 20 of 80) exists: mid-run, whatever the machine's speed.
    cluster.wait(lambda: (preempted_dir / "checkpoints" / "last.ckpt").is_file(), "the first checkpoint",
                 f"*-{preempted}.out")
    cluster.run("scancel", "--signal=USR1", preempted)
    # The reference run: the same config, never interrupted (it runs while the other waits to restart).
    straight = cluster.submit("train", f"run_dir={straight_dir}", "name=straight",
                              *TRAIN_OVERRIDES)
    states = {job: cluster.wait_finished(job, f"*-{job}.out") for job in (preempted, straight)}
    return {"dirs": (preempted_dir, straight_dir), "jobs": (preempted, straight), "states": states}


def test_preempted_job_was_requeued_once_and_resumed_from_its_checkpoint(cluster, training):
    preempted_dir, _ = training["dirs"]
    preempted, straight = training["jobs"]
    assert training["states"][preempted]["Restarts"] == "1"
    assert training["states"][straight]["Restarts"] == "0"
    log = cluster.log(f"*-{preempted}.out")
    assert ", restart 0," in log and ", restart 1," in log

    hpc = preempted_dir / "hpc_ckpt_1.ckpt"
    assert sorted(p.name for p in preempted_dir.glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    step = torch.load(hpc, weights_only=True, map_location="cpu")["global_step"]
    assert 20 <= step < 80  # saved mid-run, at the step boundary after the signal
    first, second = log.split(", restart 1,", 1)
    assert f"requeue signal: saved step {step} to {hpc}" in first
    assert f"requeueing SLURM job {preempted}" in first
    assert f"Restored all states from the checkpoint at {hpc}" in second
    assert "`Trainer.fit` stopped: `max_steps=80` reached." in second


def test_requeued_run_ends_with_the_weights_of_an_uninterrupted_run(training):
    preempted_dir, straight_dir = training["dirs"]
    a, b = (load_file(d / "model.safetensors") for d in (preempted_dir, straight_dir))  # EMA weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a, last_b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
                      for d in (preempted_dir, straight_dir))
    assert last_a["global_step"] == last_b["global_step"] == 80
    state_a, state_b = last_a["state_dict"], last_b["state_dict"]  # live weights and EMA
    assert state_a.keys() == state_b.keys()
    assert not [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    moments_a, moments_b = (c["optimizer_states"][0]["state"] for c in (last_a, last_b))
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)


def test_wandb_run_continues_across_the_requeue(training):
    preempted_dir, _ = training["dirs"]
    run_id = (preempted_dir / "wandb_run_id.txt").read_text().strip()
    attempts = sorted((preempted_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(p.name.endswith(f"-{run_id}") for p in attempts)


# ---------------------------------------------------------------- export array: preempt one task, kill one


def test_export_array_survives_preemption_and_a_killed_task(cluster, training, tmp_path_factory):
    _, straight_dir = training["dirs"]
    weights = straight_dir / "model.safetensors"
    root = tmp_path_factory.mktemp("slurm-export")
    array_dir, reference_dir = root / "array", root / "reference"
    job = cluster.submit("export", str(weights), f"export.out_dir={array_dir}", *EXPORT_OVERRIDES,
                         "--parts", "2")
    logs = f"*-{job}_*.out"
    # The same set made by one process, outside the cluster, for comparison.
    reference = subprocess.Popen(
        [sys.executable, "-m", "diffaug", "export", str(weights), f"export.out_dir={reference_dir}",
         *EXPORT_OVERRIDES], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    records = [array_dir / ".export" / f"records-r{part:05d}.jsonl" for part in (0, 1)]
    cluster.wait(lambda: all(r.is_file() and r.stat().st_size > 0 for r in records),
                 "both parts to record images", logs)
    cluster.run("scancel", "--batch", "--signal=USR1", f"{job}_0")  # preemption: the task requeues itself
    cluster.run("scancel", "--signal=KILL", f"{job}_1")  # a task killed outright ...
    cluster.wait(lambda: cluster.job(f"{job}_1")["JobState"] not in ("RUNNING", "COMPLETING"),
                 "the killed task to end", logs)
    assert cluster.job(f"{job}_1")["JobState"] in ("CANCELLED", "FAILED")
    cluster.run("scontrol", "requeue", f"{job}_1")  # ... and requeued by hand

    for task in (0, 1):
        assert cluster.wait_finished(f"{job}_{task}", logs)["Restarts"] == "1"
        resumed = re.findall(rf"part {task} of 2: 150 images, (\d+) already done",
                             cluster.log(f"*-{job}_{task}.out"))
        assert len(resumed) == 2 and resumed[0] == "0" and int(resumed[1]) > 0, resumed  # kept its images
    output, _ = reference.communicate(timeout=JOB_TIMEOUT_S)
    assert reference.returncode == 0, output

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    made, expected = files(array_dir), files(reference_dir)
    assert len([name for name in expected if name.startswith("images/")]) == 300
    assert "dataset_card.json" in made and ".export" not in {Path(n).parts[0] for n in made}  # finalised
    assert made.keys() == expected.keys()
    assert [name for name in made if made[name] != expected[name]] == []
