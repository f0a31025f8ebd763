"""FID during training: logged on schedule, and the numbers are those of the EMA weights at that step."""

from __future__ import annotations

import csv

import pytest
import torch

from diffaug.inference import load_for_inference
from diffaug.evaluation import load_real
from diffaug.evaluation.features import random_features
from diffaug.evaluation.manifold import precision_recall
from diffaug.evaluation.quality import fid_kid
from diffaug.sampling.settings import SampleSettings
from diffaug.training import train
from diffaug.training.quality_monitor import quality_samples
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow


def test_fid_logged_every_n_steps_matches_the_final_ema_weights(tmp_path):
    cfg = tiny_config(
        tmp_path / "run", "logging.logger=csv", "training.fid_every_n_steps=4", "training.fid_num_samples=30",
        "eval.quality.features=random", "eval.quality.reference_max_items=120", "eval.quality.device=cpu",
        f"eval.quality.cache_dir={tmp_path / 'cache'}", "eval.quality.kid_subsets=5", "sampling.batch_size=16",
    )
    result = train(cfg)
    (metrics_file,) = (result.run_dir / "logs").glob("version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics_file.open()) if r.get("quality/fid")]
    assert [int(r["step"]) for r in rows] == [4, 8]
    for row in rows:
        assert float(row["quality/fid"]) > 0
        assert 0 <= float(row["quality/precision"]) <= 1 and 0 <= float(row["quality/recall"]) <= 1
    assert rows[0]["quality/fid"] != rows[1]["quality/fid"]  # the model moved between the two
    assert len(list((tmp_path / "cache").glob("ref-random-*.safetensors"))) == 1  # reference features cached

    # Recompute the step-8 numbers from the exported EMA weights: the monitor scored exactly those.
    denoiser, _, _, class_map = load_for_inference(result.weights, use_ema=True, map_location="cpu")
    settings = SampleSettings(sampler="ddim", steps=4, guidance_scale=1.0, sampler_args={"clip_x0": True},
                              seed=0, batch_size=16)
    images, _ = quality_samples(denoiser, n=30, class_names=class_map.names, settings=settings,
                                device=torch.device("cpu"))
    extractor = random_features(in_channels=1, seed=0, device=torch.device("cpu"))
    reference = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1, max_items=120)
    real_features, fake_features = extractor(reference.images), extractor(images)
    expected = fid_kid(real_features, fake_features, kid_subsets=5) | precision_recall(real_features, fake_features)
    assert float(rows[1]["quality/fid"]) == pytest.approx(expected["fid"], rel=1e-5)
    assert float(rows[1]["quality/precision"]) == pytest.approx(expected["precision"])
    assert float(rows[1]["quality/recall"]) == pytest.approx(expected["recall"])
