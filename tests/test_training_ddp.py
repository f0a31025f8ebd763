"""Real 2-process DDP on CPU (gloo), run as a subprocess because Lightning re-launches the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::UserWarning"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, records


def test_ranks_train_on_disjoint_shares_of_each_epoch(ddp_run):
    _, records = ddp_run
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    per_rank = [[i for b in r["batches"] if b["epoch"] == 0 for i in b["ids"]] for r in records]
    assert len(per_rank[0]) == len(per_rank[1]) == 12  # 24 training items, 3 steps of 2 x 4 per epoch
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 24
    for record in records:  # labels travel with their images: ids 0-15 are class "a", 16-31 class "b"
        for batch in record["batches"]:
            assert batch["labels"] == [i // 16 for i in batch["ids"]]


def test_weights_and_ema_are_identical_across_ranks(ddp_run):
    _, records = ddp_run
    assert records[0]["global_step"] == records[1]["global_step"] == 4
    assert records[0]["denoiser"] == records[1]["denoiser"]
    assert records[0]["ema"] == records[1]["ema"]


def test_only_rank_zero_writes_checkpoints_logs_and_samples(ddp_run):
    out, _ = ddp_run
    run = out / "run"
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000004.png"]
    assert "sample grid" in (out / "rank0.log").read_text()
    assert "sample grid" not in (out / "rank1.log").read_text()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    # The EMA counted the global batch: 2 ranks x 4 images per step.
    assert float(checkpoint["state_dict"]["ema.images_seen"]) == 4 * 2 * 4
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
