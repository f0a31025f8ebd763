"""The downstream benchmark on a tiny real setting: a real export of a tiny checkpoint, 8x8 digits, k=5."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffaug.evaluation import ConventionalAugment, load_export, load_real
from diffaug.evaluation.cli import eval_main
from diffaug.sampling import export_augmentation_set
from tests.export_helpers import make_checkpoint

ALL_ARMS = "[real,real+aug,real+syn,real+aug+syn,syn]"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    checkpoint = make_checkpoint(root)
    export_augmentation_set(
        checkpoint, [f"export.out_dir={root / 'export'}", "export.per_class=6"], progress=False, device="cpu"
    )
    return root / "export"


def test_export_loader_follows_class_indices_not_folder_order(tmp_path):
    # "b/x" is class 0 but its sanitised folder "b_x" sorts after "a".
    checkpoint = make_checkpoint(tmp_path, class_names=("b/x", "a"))
    out = tmp_path / "export"
    export_augmentation_set(checkpoint, [f"export.out_dir={out}", "export.per_class=3"], progress=False, device="cpu")
    data = load_export(out, resolution=8, channels=1)
    assert data.class_map.names == ("b/x", "a")
    with open(out / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # each image must carry the class index the exporter generated it for
        pixels = torch.from_numpy(np.array(Image.open(out / row["path"]))).reshape(1, 8, 8)
        matches = [i for i in range(len(data)) if torch.equal(data.images[i], pixels)]
        assert matches and all(int(data.labels[i]) == int(row["class_index"]) for i in matches)


def test_conventional_augment_identity_and_determinism():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    identity = ConventionalAugment(translate=0.0, rotate=0.0, scale=0.0)
    assert torch.allclose(identity(x, torch.Generator().manual_seed(0)), x, atol=1e-5)
    jitter = ConventionalAugment(translate=0.2, rotate=20.0, scale=0.2, hflip=True)
    a = jitter(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, jitter(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and (a - x).abs().mean() > 0.05


def test_downstream_cli_writes_table_plot_and_consistent_numbers(export_dir, tmp_path):
    out = tmp_path / "report"
    status = eval_main([
        "downstream", "data.source=sklearn_digits", "data.resolution=8", "data.per_class_limit=5",
        f"eval.downstream.arms={ALL_ARMS}", "eval.downstream.seeds=[0,1]", "eval.downstream.steps=40",
        "eval.downstream.batch_size=32", "eval.downstream.classifier_args={width: 8}", "eval.downstream.device=cpu",
        "logging.logger=none", "--export", str(export_dir), "--out", str(out),
    ])
    assert status == 0
    with open(out / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 10 and {r["arm"] for r in runs} == {"real", "real+aug", "real+syn", "real+aug+syn", "syn"}
    accuracy = {(r["arm"], int(r["seed"])): float(r["accuracy"]) for r in runs}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    # 50 real digits and 40 steps: far above the 10 % of chance.
    assert accuracy[("real", 0)] > 0.3 and accuracy[("real", 1)] > 0.3
    train_images = {r["arm"]: int(r["train_images"]) for r in runs}
    assert train_images == {"real": 50, "real+aug": 50, "real+syn": 110, "real+aug+syn": 110, "syn": 60}
    per_class = [float(runs[0][f"acc_{d}"]) for d in range(10)]
    test = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1)
    counts = test.class_counts()
    assert float(runs[0]["accuracy"]) == pytest.approx(np.dot(per_class, counts) / counts.sum(), abs=1e-5)

    with open(out / "summary.csv") as handle:
        summary = {row["arm"]: row for row in csv.DictReader(handle)}
    row = summary["(c) real+syn"]
    c = np.array([accuracy[("real+syn", s)] for s in (0, 1)])
    a = np.array([accuracy[("real", s)] for s in (0, 1)])
    assert float(row["mean"]) == pytest.approx(c.mean(), abs=1e-5)
    assert float(row["std"]) == pytest.approx(c.std(ddof=1), abs=1e-5)
    assert float(row["gain_vs_real"]) == pytest.approx((c - a).mean(), abs=1e-5)

    report = (out / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if re.match(r"\| \([a-e]\) ", line)]
    assert len(table_rows) == 5  # one summary row per arm
    assert f"{100 * c.mean():.2f}" in report
    image = Image.open(out / "accuracy.png")
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank


def test_downstream_cli_reports_bad_arm_and_missing_export(tmp_path, capsys):
    status = eval_main(["downstream", "data.source=sklearn_digits", "eval.downstream.arms=[real,real+synth]",
                        "--export", str(tmp_path)])
    assert status == 2 and "real+syn" in capsys.readouterr().err
    status = eval_main(["downstream", "data.source=sklearn_digits", "data.resolution=8", "eval.downstream.steps=1",
                        "--export", str(tmp_path / "none")])
    assert status == 2 and "diffaug export" in capsys.readouterr().err


def test_fid_cli_on_the_export_with_random_features(export_dir, tmp_path):
    out = tmp_path / "quality"
    status = eval_main([
        "fid", "data.source=sklearn_digits", "data.resolution=8", "eval.quality.features=random",
        f"eval.quality.cache_dir={tmp_path / 'cache'}", "eval.quality.kid_subsets=5", "eval.quality.device=cpu",
        "logging.logger=none", "--export", str(export_dir), "--out", str(out),
    ])
    assert status == 0
    report = json.loads((out / "quality.json").read_text())
    assert report["overall"]["n_synthetic"] == 60 and report["overall"]["n_real"] == 360
    assert report["overall"]["fid"] > 0 and len(report["per_class"]) == 10
    assert "| all classes |" in (out / "quality.md").read_text()
    assert len(list((tmp_path / "cache").glob("ref-random-*.safetensors"))) == 1


def test_bpd_cli_on_a_vp_checkpoint(tmp_path, capsys):
    """The command's wiring (data, dequantisation, seeds, the bits formula) against a direct computation; the
    likelihood itself is checked against exact densities in test_diffusion_likelihood.py."""
    from diffaug.diffusion import bits_per_dim, dequantize, ode_likelihood
    from diffaug.sampling.api import load_model

    checkpoint = make_checkpoint(tmp_path, overrides=("objective.process=vp",))
    common = ["data.source=sklearn_digits", "data.resolution=8", "eval.likelihood.max_items=6",
              "eval.likelihood.steps=2", "eval.likelihood.device=cpu", "eval.likelihood.batch_size=4"]
    status = eval_main(["bpd", *common, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bpd")])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "bpd" / "bpd.json").read_text())
    assert report["n"] == 6 and report["nfe"] == 8 and report["divergence"] == "hutchinson"
    assert "bits/dim over 6 test images" in capsys.readouterr().out

    model = load_model(checkpoint, device="cpu")
    images = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1, max_items=6).images
    generator = torch.Generator().manual_seed(0)
    bpd = []
    for start in (0, 4):  # the command's batches of 4, each with its own probe seed
        x = dequantize(images[start : start + 4], generator)
        result = ode_likelihood(model.denoiser, model.process, x, steps=2,
                                generator=torch.Generator().manual_seed(start))
        bpd.append(bits_per_dim(result.logp, 64))
    assert report["bits_per_dim"] == pytest.approx(float(torch.cat(bpd).mean()), rel=1e-6)

    ddpm = make_checkpoint(tmp_path / "ddpm", overrides=("objective.process=ddpm",))
    status = eval_main(["bpd", *common, "--checkpoint", str(ddpm), "--out", str(tmp_path / "ddpm")])
    assert status == 2 and "continuous-time" in capsys.readouterr().err
