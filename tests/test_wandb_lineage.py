"""W&B artifacts chain a checkpoint to its augmentation set and to every evaluation of that set, in real
offline runs read back from their ``.wandb`` files (no API key: offline mode writes everything locally)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import wandb

from diffaug.evaluation.cli import _log_downstream_to_wandb, eval_main
from diffaug.evaluation.downstream import Candidate, DownstreamResult, RunResult, write_report
from diffaug.evaluation.recipe import Recipe
from diffaug.sampling import export_augmentation_set, sample_grid
from diffaug.training import train
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401
from tests.wandb_records import offline_runs

pytestmark = pytest.mark.slow

WANDB = ["logging.logger=wandb", "logging.mode=offline"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging stays here


def _downstream_result() -> DownstreamResult:
    """Two arms, one k, two seeds: what the report and the W&B run need, without training classifiers."""
    names = tuple(str(d) for d in range(10))
    runs, candidates = [], []
    for arm, accuracy in (("real", 0.5), ("real+syn", 0.6)):
        for seed in (0, 1):
            runs.append(RunResult(arm=arm, k=5, seed=seed, setting="-", val=accuracy, accuracy=accuracy + seed / 100,
                                  per_class=[accuracy] * 10, train_images=50, best_step=10, steps=20,
                                  still_rising=False, real_seen=100))
            candidates.append(Candidate(arm=arm, k=5, seed=seed, setting="-", val=accuracy, best_step=10, steps=20,
                                        still_rising=False, real_seen=100, synthetic_seen=0, train_images=50,
                                        seconds=1.0))
    return DownstreamResult(class_names=names, arms=["real", "real+syn"], ks=[5], seeds=[0, 1], runs=runs,
                            candidates=candidates, settings={
                                "classifier": "test", "recipe": asdict(Recipe(steps=20)), "epochs": None,
                                "val_images": 100, "val_per_class": 10, "test_images": 360})


def test_checkpoint_set_and_evaluations_are_linked_by_artifacts(tmp_path, offline_wandb):
    run_dir = tmp_path / "run"
    result = train(tiny_config(run_dir, "name=lin", *WANDB))
    export_dir = run_dir / "export"
    export_augmentation_set(result.weights, [*WANDB, "export.per_class=6", f"export.out_dir={export_dir}"],
                            progress=False, device="cpu")
    sample_grid(result.weights, run_dir / "grid.png", per_class=2, overrides=WANDB, device="cpu")
    assert eval_main([
        "fid", "name=lin", f"run_dir={run_dir}", *WANDB, "data.source=sklearn_digits", "data.resolution=8",
        "eval.quality.features=random", f"eval.quality.cache_dir={tmp_path / 'cache'}", "eval.quality.kid_subsets=5",
        "eval.quality.device=cpu", "--export", str(export_dir), "--out", str(tmp_path / "quality"),
    ]) == 0
    downstream = _downstream_result()
    paths = write_report(downstream, tmp_path / "downstream")
    cfg = tiny_config(run_dir, "name=lin", *WANDB)
    _log_downstream_to_wandb(cfg, downstream, paths, [export_dir])

    wandb.teardown()  # the service writes a finished run's file out on its own time; this waits for it
    runs = offline_runs(run_dir)
    assert set(runs) == {"train", "export", "sample", "quality", "downstream"}

    # Training: model.safetensors as lin-model, and Lightning's log_model checkpoint artifact.
    model = runs["train"].artifact("lin-model")
    assert model.type == "model" and [e.path for e in model.manifest.contents] == ["model.safetensors"]
    assert json.loads(model.metadata)["step"] == 8
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    checkpoints = runs["train"].versions(f"model-{run_id}")  # last.ckpt and the best top-k checkpoint
    assert len(checkpoints) == 2
    assert all([e.path for e in c.manifest.contents] == ["model.ckpt"] for c in checkpoints)
    names = sorted(json.loads(c.metadata)["original_filename"] for c in checkpoints)
    assert names[0] == "last.ckpt" and names[1].startswith("step=0000008-val_loss_ema=")
    model_ref = {"name": "lin-model", "type": "model", "digest": model.digest}

    # Export: uses the same model version (same digest), logs the set with that input in its metadata.
    export = runs["export"]
    assert export.value("inputs") == [model_ref]
    augmentation_set = export.artifact("lin-set")
    assert augmentation_set.type == "dataset"
    metadata = json.loads(augmentation_set.metadata)
    assert metadata["inputs"] == [model_ref] and metadata["num_images"] == 60
    card = json.loads((export_dir / "dataset_card.json").read_text())
    assert metadata["checkpoint_sha256"] == card["checkpoint_sha256"]
    entries = {e.path: e.ref for e in augmentation_set.manifest.contents}
    assert "dataset_card.json" in entries and sum(p.startswith("images/") for p in entries) == 60
    assert all(ref.startswith(export_dir.resolve().as_uri()) for ref in entries.values())  # by reference
    set_ref = {"name": "lin-set", "type": "dataset", "digest": augmentation_set.digest}

    # The preview grid: an image of a run that used the model.
    sample = runs["sample"]
    assert sample.value("inputs") == [model_ref] and sample.history["samples/_type"] == "image-file"
    assert list(sample.folder.rglob("media/images/samples_*.png"))

    # Both evaluations use the set version the export logged; the downstream table and plot as W&B media.
    assert runs["quality"].value("inputs") == [set_ref] and "quality/fid" in runs["quality"].history
    assert runs["downstream"].value("inputs") == [set_ref]
    history = runs["downstream"].history
    assert history["downstream/summary/_type"] == "table-file" and history["downstream/kshot/_type"] == "image-file"
    (table,) = runs["downstream"].folder.rglob("media/table/downstream/summary_*.table.json")
    rows = json.loads(table.read_text())
    assert [row[:2] for row in rows["data"]] == [[5, "real"], [5, "real+syn"]]
