"""What a newcomer's first ``python train.py`` prints: no third-party tips, hints or deprecation noise."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from diffaug.training.console import quiet_lightning

REPO = Path(__file__).resolve().parents[1]
NOISE = ("The `srun` command is available", "💡 Tip", "litlogger", "isinstance(treespec, LeafSpec)")


def _train_demo(run_dir: Path, *overrides: str) -> str:
    """``python train.py`` on the demo config outside a SLURM job; returns what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "train.py", "configs/experiment/demo.yaml", *overrides, f"run_dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.slow
def test_demo_train_prints_no_lightning_noise(tmp_path):
    output = _train_demo(tmp_path / "demo", "training.max_steps=2")
    assert "EMA weights:" in output and "checkpoints/last.ckpt" in output  # the run's own lines still print
    assert re.search(r"^final step:\s+2$", output, re.M)  # what benchmarks/gpu_check_summary.py reads
    assert output.count("GPU available: False") == 1  # Lightning's own lines once, in the run's log format
    assert "INFO lightning.pytorch.utilities.rank_zero: GPU available" in output
    for text in NOISE:
        assert text not in output, text


def test_a_bad_config_key_ends_train_py_with_one_line_naming_it():
    done = subprocess.run([sys.executable, "train.py", "configs/experiment/demo.yaml", "training.lrr=1e-4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown config key 'training.lrr'" in done.stderr and "Did you mean 'lr'?" in done.stderr


@pytest.mark.slow
def test_a_dataset_shorter_than_the_logging_interval_logs_every_interval_without_a_hint(tmp_path):
    # 8 images per class, 5% held out, batches of 16: 4 batches an epoch, fewer than the 10-step interval.
    output = _train_demo(tmp_path / "short", "training.max_steps=30", "data.per_class_limit=8",
                         "data.batch_size=16", "training.log_every_n_steps=10")
    assert "is smaller than the logging interval" not in output
    (metrics,) = (tmp_path / "short" / "logs").glob("*/metrics.csv")
    with open(metrics, newline="") as f:
        logged = sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")})
    assert logged == [9, 19, 29]  # Lightning's step column is the optimizer step before the update


@pytest.mark.skipif(shutil.which("srun") is None, reason="Lightning's srun hint needs srun on the PATH")
def test_srun_hint_stays_inside_a_slurm_job_and_real_warnings_stay():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning(env={"SLURM_JOB_ID": "42"}):
            SLURMEnvironment._validate_srun_used()
            warnings.warn("a real warning", UserWarning)
        with quiet_lightning(env={}):
            SLURMEnvironment._validate_srun_used()
    messages = [str(w.message) for w in caught]
    assert sum("The `srun` command is available" in m for m in messages) == 1
    assert "a real warning" in messages
