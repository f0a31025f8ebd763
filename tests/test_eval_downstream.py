"""Evaluation commands on a tiny real setting: a real export of a tiny checkpoint, 8x8 digits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffaug.evaluation import load_export, load_real
from diffaug.evaluation.cli import eval_main
from diffaug.sampling import export_augmentation_set
from tests.export_helpers import make_checkpoint


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
    from diffaug.sampling.model import load_model

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
