"""benchmarks/gpu_check.sh cannot rot: its dry run (CPU, tiny configs) runs every step but the compiled
benchmark and leaves the summary the GPU run would leave; a budget that runs out keeps what finished."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(out: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out / "unused")}  # --out wins over the device tool's $OUT
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    done = gpu_check(tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("setup", "ok"), ("info", "ok"), ("tests", "ok"), ("bench-eager", "ok"), ("train", "ok"),
        ("bench-compiled", "skipped")]
    assert all(s["seconds"] <= s["limit"] for s in summary["steps"])
    info = summary["info"]
    assert info["versions"]["torch"] and info["versions"]["lightning"] and info["versions"]["diffusers"]
    peaks = info["measured_matmul_peak"]
    assert sorted(peaks) == ["bf16", "fp32"] and all(v["flops_per_s"] > 0 for v in peaks.values())
    assert "1 passed" in summary["tests"]
    train = summary["train"]
    assert train["final_step"] == 4 and train["weights_written"] and train["last_loss"] > 0
    bench = summary["benchmarks"]["bench-eager"]
    (row,) = bench["training"]
    assert row["config"] == "dit-tiny-16" and row["ours"]["mfu_measured"] > 0
    assert row["ref"]["images_per_s"] > 0
    assert [r["sampler"] for r in bench["sampling"]] == ["ddim-50", "dpmpp_2m-20"]
    assert bench["sampling_identity"][0]["byte_identical"]
    # What comes back from the device tool: a few flat files.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench-eager.json", "gpu_check.log", "summary.json", "summary.md", "train-metrics.csv"]
    text = (tmp_path / "summary.md").read_text()
    assert "DRY RUN" in text and "Measured dense matmul peak" in text
    assert "| dit-tiny-16 | fp32 | no |" in text


def test_a_budget_that_runs_out_skips_the_rest_and_keeps_what_finished(tmp_path):
    done = gpu_check(tmp_path, "--budget", "6", timeout=60)
    assert done.returncode == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["setup"] == "ok"  # a second: nothing to install here
    assert statuses["info"] in ("ok", "timeout", "skipped")  # whatever is left of the 6 s, at most
    assert {statuses[name] for name in ("tests", "bench-eager", "train")} == {"skipped"}
    assert "no time left in the 6 s budget" in (tmp_path / "summary.md").read_text()
