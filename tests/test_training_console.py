"""What a newcomer's first ``python train.py`` prints: no third-party tips, hints or deprecation noise."""

from __future__ import annotations

import os
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


@pytest.mark.slow
def test_demo_train_prints_no_lightning_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "train.py", "configs/experiment/demo.yaml", "training.max_steps=2",
         f"run_dir={tmp_path / 'demo'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "final step 2" in output  # the run's own lines still print
    for text in NOISE:
        assert text not in output, text


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
