"""W&B offline: the run folder holds the logged metrics and config; a resumed run keeps the run id."""

from __future__ import annotations

import pytest

from diffaug.training import train
from tests.training_helpers import StopAtStep, one_torch_thread, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow


def test_offline_run_logs_metrics_and_keeps_its_id_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own cache/config files stay in the test folder
    overrides = ["logging.logger=wandb", "logging.mode=offline", "training.log_every_n_steps=1",
                 "training.sample_every_n_steps=4"]
    train(tiny_config(tmp_path / "run", *overrides), callbacks=[StopAtStep(4)])
    train(tiny_config(tmp_path / "run", *overrides, "training.resume=auto"))

    run_id = (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    first = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    for key in (b"train/loss", b"train/lr", b"train/loss_t0.", b"val/loss_ema", b"train/images_per_sec",
                b"ema_halflife_kimg", b"samples"):
        assert key in first, key
    assert list(runs[0].rglob("media/images/samples_*.png"))


def test_quality_report_gets_its_own_offline_run_without_reinit(tmp_path, monkeypatch, capfd, recwarn):
    import wandb

    from diffaug.config import load_config
    from diffaug.evaluation.cli import _log_quality_to_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = load_config([], ["name=q", "logging.logger=wandb", "logging.mode=offline"])
    # Explicit dirs: wandb reads WANDB_DIR once per process, so an earlier test's setting would win.
    wandb.init(project="p", mode="offline", name="left-open", dir=str(tmp_path))  # e.g. from an earlier train()
    _log_quality_to_wandb(cfg, {"overall": {"fid": 12.5, "n": 3}, "per_class": {"cat": {"fid": 20.0}}}, tmp_path)
    assert wandb.run is None  # both finished; return_previous (the default) would have logged into the first
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    logged = b"".join(p.read_bytes() for r in runs for p in r.rglob("*.wandb"))
    assert b"quality/fid" in logged and b"quality/cat/fid" in logged
    said = capfd.readouterr()
    assert "reinit" not in said.out + said.err
    assert not [w for w in recwarn if "reinit" in str(w.message)]
