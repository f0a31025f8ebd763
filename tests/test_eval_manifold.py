"""Precision / recall / density / coverage, the Inception Score, and label agreement in the quality report."""

from __future__ import annotations

import math

import pytest
import torch

from diffaug.evaluation import LabelledImages, load_real, sample_quality
from diffaug.evaluation.features import domain_features, random_features
from diffaug.evaluation.manifold import knn_radii, precision_recall
from diffaug.evaluation.quality import inception_score, quality_markdown

CPU = torch.device("cpu")


def gaussian(n: int, *, dim: int = 8, mean: float = 0.0, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    return mean + std * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- precision / recall / density / coverage


def test_identical_sets_are_perfect():
    x = gaussian(300)
    m = precision_recall(x, x.clone(), k=3)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert m["density"] >= 1.0  # every sample sits in its own ball and in those of its k neighbours


def test_two_draws_of_one_distribution_score_high():
    m = precision_recall(gaussian(1000, seed=0), gaussian(1000, seed=1), k=5)
    assert m["precision"] > 0.9 and m["recall"] > 0.9 and m["coverage"] > 0.9, m
    assert 0.8 < m["density"] < 1.2, m


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = gaussian(1000, seed=0)
    collapsed = gaussian(1000, std=0.05, seed=1)  # all samples near the mode: faithful, not diverse
    m = precision_recall(real, collapsed, k=3)
    assert m["precision"] > 0.95, m
    assert m["recall"] < 0.1 and m["coverage"] < 0.1, m
    assert m["density"] > 1.1, m  # samples crowd where the real data is densest (a matching set gives ~1)


def test_off_manifold_samples_have_no_precision():
    m = precision_recall(gaussian(500, seed=0), gaussian(500, mean=10.0, seed=1), k=3)
    assert m == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0, "k": 3}


def test_knn_radius_is_the_kth_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="needs more than 4 samples"):
        knn_radii(x, 4)


# ---------------------------------------------------------------- Inception Score


def test_inception_score_limits():
    k, per_class = 10, 100
    uninformative = torch.zeros(k * per_class, k)  # p(y|x) uniform: IS = 1
    assert inception_score(uninformative, splits=5)["is_mean"] == pytest.approx(1.0, abs=1e-9)
    confident = 50.0 * torch.eye(k).repeat_interleave(per_class, dim=0)  # sure of the class, all classes equally
    assert inception_score(confident, splits=1)["is_mean"] == pytest.approx(k, rel=1e-6)
    one_class = 50.0 * torch.eye(k)[[0] * (k * per_class)]  # sure, but always the same class: IS = 1
    assert inception_score(one_class, splits=1)["is_mean"] == pytest.approx(1.0, abs=1e-6)
    # Half the classes drawn: IS = exp(H(p(y))) = k / 2.
    half = confident[: k * per_class // 2]
    assert inception_score(half, splits=1)["is_mean"] == pytest.approx(k / 2, rel=1e-6)


# ---------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def digits() -> LabelledImages:
    return load_real(source="sklearn_digits", path=None, split="train", resolution=16, channels=1)


def test_report_has_label_agreement_and_is_with_a_domain_classifier(digits, tmp_path):
    extractor = domain_features(digits, cache_dir=tmp_path, steps=150, batch_size=64, width=16, device=CPU)
    half = len(digits) // 2
    real = LabelledImages(digits.images[:half], digits.labels[:half], digits.class_map)
    held_out = LabelledImages(digits.images[half:], digits.labels[half:], digits.class_map)
    generator = torch.Generator().manual_seed(0)
    mislabelled = LabelledImages(held_out.images, held_out.labels[torch.randperm(len(held_out), generator=generator)],
                                 digits.class_map)
    settings = {"extractor": extractor, "cache_dir": tmp_path, "kid_subsets": 10, "kid_subset_size": 100}
    good = sample_quality(real, held_out, **settings)
    bad = sample_quality(real, mislabelled, **settings)

    assert good["overall"]["label_agreement"] > 0.8
    # The classifier's accuracy on the real reference is the ceiling, the same for both synthetic sets.
    assert good["overall"]["label_agreement_real"] == bad["overall"]["label_agreement_real"] > 0.8
    assert bad["overall"]["label_agreement"] < 0.25  # chance is 0.1
    # Same images overall, so the label-free overall metrics agree; the per-class ones see the mix-up.
    assert good["overall"]["fid"] == pytest.approx(bad["overall"]["fid"])
    # Two halves of one data set: precision and recall estimate the same overlap, which with k=3 in this
    # feature space is well below 1. Measured over extractor seeds 0-9 and 1 or 2 threads: 0.77-0.84 (the
    # last bits of training differ by machine and thread count), so the bound sits far below that range.
    assert good["overall"]["precision"] > 0.6 and good["overall"]["recall"] > 0.6
    good_fid = sum(m["fid"] for m in good["per_class"].values())
    bad_fid = sum(m["fid"] for m in bad["per_class"].values())
    assert bad_fid > 2 * good_fid
    # IS of held-out real digits under a briefly trained 10-class classifier: well above 1 (measured
    # 3.8-4.4 over extractor seeds 0-5), at most 10.
    assert 2.0 < good["overall"]["is_mean"] <= 10.0
    text = quality_markdown(good)
    assert "label agreement" in text and "Inception Score" in text and "on the real reference" in text and f"{good['overall']['is_mean']:.3f}" in text


def test_report_without_a_classifier_head_says_why_there_is_no_is(digits, tmp_path):
    extractor = random_features(in_channels=1, seed=0, device=CPU)
    report = sample_quality(digits, digits, extractor=extractor, cache_dir=tmp_path, per_class=False,
                            kid_subsets=5, kid_subset_size=100)
    assert "is_mean" not in report["overall"] and "label_agreement" not in report["overall"]
    assert "no classifier head" in report["inception_score"]
    assert report["overall"]["precision"] == report["overall"]["recall"] == 1.0
    assert math.isfinite(report["overall"]["density"])
    assert "no classifier head" in quality_markdown(report)
