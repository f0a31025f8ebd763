"""Evaluation: sample quality (FID / KID) and the downstream augmentation benchmark."""

from diffaug.evaluation.classifiers import CLASSIFIERS, SmallCNN, build_classifier, penultimate_features
from diffaug.evaluation.data import LabelledImages, load_export, load_real
from diffaug.evaluation.downstream import ARMS, BenchmarkSpec, DownstreamResult, Pool, run_downstream, write_report
from diffaug.evaluation.features import FEATURE_EXTRACTORS, FeatureExtractor, InceptionFeatures
from diffaug.evaluation.quality import fid_kid, sample_quality, write_quality_report
from diffaug.evaluation.augment import Augmenter
from diffaug.evaluation.recipe import Recipe, SyntheticMix, evaluate_classifier, fit_classifier

__all__ = [
    "ARMS",
    "CLASSIFIERS",
    "FEATURE_EXTRACTORS",
    "Augmenter",
    "BenchmarkSpec",
    "DownstreamResult",
    "FeatureExtractor",
    "InceptionFeatures",
    "LabelledImages",
    "Pool",
    "Recipe",
    "SyntheticMix",
    "SmallCNN",
    "build_classifier",
    "evaluate_classifier",
    "fid_kid",
    "fit_classifier",
    "load_export",
    "load_real",
    "penultimate_features",
    "run_downstream",
    "sample_quality",
    "write_quality_report",
    "write_report",
]
