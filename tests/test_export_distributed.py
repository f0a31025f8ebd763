"""Exports as separate processes: a 2-process torch.distributed job, and a run killed with SIGKILL and
restarted; both must give exactly the set an uninterrupted single process gives."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffaug.sampling import export_augmentation_set
from tests.export_helpers import make_checkpoint, one_cpu_thread, tree_digest  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cat", "dog", "bird")


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), class_names=NAMES)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.ddp
def test_two_ddp_processes_give_the_same_bytes_as_one(checkpoint, tmp_path):
    settings = [
        "export.per_class=4",
        "export.formats=[folder,shards]",
        "export.shard_size=4",
        "sampling.batch_size=3",
    ]
    single = tmp_path / "single"
    export_augmentation_set(checkpoint, [*settings, f"export.out_dir={single}"])
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "tests/scripts/export_ddp.py"),
            str(checkpoint),
            *settings,
            f"export.out_dir={ddp}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 12 images split 6 / 6 between the ranks; rank 0 finalised after both were done, then both saw the set.
    assert "rank 0 of 2: generated 6, finalized True" in result.stdout
    assert "rank 1 of 2: generated 6, finalized True" in result.stdout
    assert tree_digest(ddp) == tree_digest(single)


def test_sigkill_and_restart_gives_the_uninterrupted_set(checkpoint, tmp_path):
    # 20 steps at batch size 1: slow enough (several seconds) that the kill lands mid-way.
    settings = [
        "export.per_class=12",
        "export.formats=[folder,shards]",
        "export.shard_size=16",
        "sampling.steps=20",
        "sampling.batch_size=1",
        "logging.progress_bar=false",
    ]
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        str(ROOT / "sample.py"),
        str(checkpoint),
        *settings,
        f"export.out_dir={killed}",
    ]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(killed.glob("images/*/*.png"))) < 6:
            assert process.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "the export made no images in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    made = len(list(killed.glob("images/*/*.png")))
    assert 6 <= made < 36 and not (killed / "dataset_card.json").exists()

    resumed = export_augmentation_set(checkpoint, [*settings, f"export.out_dir={killed}"])  # the same command
    assert resumed.finalized and resumed.resumed >= made - 1 and resumed.generated == 36 - resumed.resumed
    uninterrupted = tmp_path / "uninterrupted"
    export_augmentation_set(
        checkpoint, [*settings[:-2], "sampling.batch_size=16", f"export.out_dir={uninterrupted}"]
    )
    assert tree_digest(killed) == tree_digest(uninterrupted)  # includes: no temp file, no work folder left
