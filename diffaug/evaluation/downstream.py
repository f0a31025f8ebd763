"""The downstream benchmark: does the synthetic set help a classifier trained on k real images per class?

The protocol, built so that a result can be trusted:

- **cells**: every k of ``ks`` times every seed. A seed draws its own k-shot subset (the data module's
  ``per_class_limit`` subset for ``data.seed = seed``: exactly the images a diffusion model trained with
  that seed saw) and the classifiers' initialisation; the arms of a cell share both.
- **validation, not test, for every choice**: the validation images are the data's holdout
  (``data.holdout_per_class``), drawn once and never part of any training set. Each arm tries its
  candidate settings (augmentation recipes, real:synthetic ratio, loss weight, teacher filter, labels),
  keeps each run's best-validation checkpoint, and the best candidate is the arm's result. The test
  split is read once per arm and cell, for the chosen candidate only (``test=False`` never reads it).
- **equal real exposure**: every batch holds ``batch_size`` real images (recipe.py); synthetic images
  come on top, so every arm of a cell sees each real image equally often.

Arms:
  real            the k-shot real images, no augmentation
  real+aug        the best conventional recipe of ``augment`` on validation
  real+syn        real + the synthetic set (best synthetic setting)
  real+aug+syn    real+aug's chosen recipe on real and synthetic images, best synthetic setting
  syn             the synthetic set alone (Classification Accuracy Score, a diagnostic)
  real2x          2k real images per class (the k-shot images plus k more): what more real data is worth
  real2x+aug      2k real images with real+aug's chosen recipe

Reported per k: test accuracy mean / std over seeds, paired gains over the baselines with a 95%
t-interval, every candidate's validation score, whether the budget looked short, as CSV, Markdown and
a plot of accuracy against k.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaug.data import holdout_indices, select_indices
from diffaug.evaluation.augment import Augmenter, parse_recipe
from diffaug.evaluation.classifiers import build_classifier
from diffaug.evaluation.data import LabelledImages, check_export_training_data, load_export
from diffaug.evaluation.fitcache import FitCache, tensor_digest
from diffaug.evaluation.memorisation import memorisation_report
from diffaug.evaluation.recipe import FitResult, Recipe, SyntheticMix, evaluate_classifier, fit_classifier, predict_proba
from diffaug.progress import progress, set_progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    real: int  # real images per class, in units of k (0: none)
    augment: bool
    synthetic: bool
    description: str


ARMS: dict[str, Arm] = {
    "real": Arm(1, False, False, "real images only"),
    "real+aug": Arm(1, True, False, "real + the best validated conventional augmentation"),
    "real+syn": Arm(1, False, True, "real + synthetic set"),
    "real+aug+syn": Arm(1, True, True, "real + conventional augmentation + synthetic set"),
    "syn": Arm(0, False, True, "synthetic set only (Classification Accuracy Score)"),
    "real2x": Arm(2, False, False, "twice the real images"),
    "real2x+aug": Arm(2, True, False, "twice the real images + conventional augmentation"),
}
BASELINES = ("real", "real+aug", "real2x+aug")
LABELS = ("hard", "soft")


def check_arms(arms: Sequence[str]) -> list[str]:
    """The arms in report order; unknown, repeated or unsupported combinations fail with the valid choices."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown or no arms {unknown or list(arms)}; choose from {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms repeat: {list(arms)}")
    needs_aug = [a for a in arms if ARMS[a].augment and a != "real+aug"]
    if needs_aug and "real+aug" not in arms:
        raise ValueError(f"arms {needs_aug} reuse the augmentation recipe chosen by real+aug; add real+aug to the arms")
    return sorted(arms, key=list(ARMS).index)


@dataclass(frozen=True)
class SyntheticSetting:
    """One candidate way of using the synthetic set, chosen on validation."""

    ratio: float = 1.0  # synthetic images per real image in a batch
    weight: float = 1.0  # loss weight of a synthetic image relative to a real one
    filter: float | None = None  # keep images the teacher gives p(intended class) >= this
    labels: str = "hard"  # "soft": train on the teacher's probabilities instead of the intended class

    def __post_init__(self) -> None:
        SyntheticMix(self.ratio, self.weight)  # validates
        if self.filter is not None and not 0.0 < self.filter < 1.0:
            raise ValueError(f"a teacher filter threshold must be in (0, 1) or null, got {self.filter}")
        if self.labels not in LABELS:
            raise ValueError(f"synthetic labels {self.labels!r} are not valid; choose one of {list(LABELS)}")

    @property
    def needs_teacher(self) -> bool:
        return self.filter is not None or self.labels == "soft"

    def describe(self) -> str:
        text = f"ratio {self.ratio:g}, weight {self.weight:g}"
        text += "" if self.filter is None else f", filter {self.filter:g}"
        return text + ("" if self.labels == "hard" else ", soft labels")


def synthetic_grid(
    ratios: Sequence[float], weights: Sequence[float], filters: Sequence[float | None], labels: Sequence[str]
) -> list[SyntheticSetting]:
    grid = [SyntheticSetting(float(r), float(w), None if f is None else float(f), str(lab))
            for r, w, f, lab in itertools.product(ratios, weights, filters, labels)]
    if not grid:
        raise ValueError("the synthetic settings grid is empty: give at least one ratio, weight, filter and label mode")
    return grid


@dataclass
class Candidate:
    """One trained candidate of an arm in a cell, scored on validation."""

    arm: str
    k: int
    seed: int
    setting: str
    val: float
    best_step: int
    steps: int
    still_rising: bool
    real_seen: int
    synthetic_seen: int
    train_images: int
    seconds: float


@dataclass
class RunResult:
    """An arm's chosen candidate in a cell, with its single test evaluation (None when test=False)."""

    arm: str
    k: int
    seed: int
    setting: str
    val: float
    accuracy: float | None
    per_class: list[float] | None
    train_images: int
    best_step: int
    steps: int
    still_rising: bool
    real_seen: int


@dataclass
class DownstreamResult:
    class_names: tuple[str, ...]
    arms: list[str]
    ks: list[int]
    seeds: list[int]
    runs: list[RunResult]
    candidates: list[Candidate]
    settings: dict[str, Any] = field(default_factory=dict)
    memorisation: list[dict[str, Any]] = field(default_factory=list)

    def accuracies(self, arm: str, k: int) -> np.ndarray:
        """(S,) test accuracy per seed, in seed order."""
        by_seed = {r.seed: r.accuracy for r in self.runs if r.arm == arm and r.k == k}
        return np.array([by_seed[s] for s in self.seeds], dtype=np.float64)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (k, arm): mean, std, min, max over seeds, and paired gains over each baseline present
        with their 95% t-interval half-width."""
        rows = []
        for k in self.ks:
            for arm in self.arms:
                acc = self.accuracies(arm, k)
                runs = [r for r in self.runs if r.arm == arm and r.k == k]
                row: dict[str, Any] = {
                    "k": k, "arm": arm, "mean": acc.mean(), "std": _std(acc), "min": acc.min(), "max": acc.max(),
                    "seeds": len(acc),
                    # Seeds may choose sets of different sizes (a union, a filter's survivors): their mean.
                    "train_images": round(float(np.mean([r.train_images for r in runs]))),
                    "val_mean": float(np.mean([r.val for r in runs])),
                    "still_rising": sum(r.still_rising for r in runs),
                }
                for base in BASELINES:
                    if base in self.arms and base != arm:
                        gain = acc - self.accuracies(base, k)
                        row[f"gain_vs_{base}"] = gain.mean()
                        row[f"gain_vs_{base}_ci95"] = confidence_halfwidth(gain)
                rows.append(row)
        return rows

    def per_class_means(self, k: int) -> dict[str, np.ndarray]:
        """arm -> (K,) per-class test accuracy averaged over seeds, at k."""
        return {
            arm: np.nanmean(np.array([r.per_class for r in self.runs if r.arm == arm and r.k == k]), axis=0)
            for arm in self.arms
        }


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def confidence_halfwidth(values: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the two-sided t-interval of the mean of ``values`` (paired differences); NaN for one."""
    if len(values) < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df=len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


# ---------------------------------------------------------------- the splits of a cell


@dataclass(frozen=True)
class Pool:
    """The labelled training split, in source order, and the holdout that validation reads."""

    train: LabelledImages
    holdout_per_class: int
    holdout_seed: int

    def kshot(self, k: int, seed: int) -> LabelledImages:
        """The k-shot subset of ``seed``: the same indices the data module picks for per_class_limit=k."""
        counts = np.bincount(self.train.labels.numpy(), minlength=self.train.num_classes) - self.holdout_per_class
        if k > counts.min():
            c = int(counts.argmin())
            raise ValueError(
                f"k={k} images per class is more than class {self.train.class_map.names[c]!r} has outside the "
                f"validation holdout ({int(counts[c])}); lower the k values (at most {int(counts.min())}) or "
                "data.holdout_per_class"
            )
        index, _ = select_indices(
            self.train.labels.numpy(), num_classes=self.train.num_classes, val_fraction=0.0, per_class_limit=k,
            max_items=None, seed=seed, holdout_per_class=self.holdout_per_class, holdout_seed=self.holdout_seed,
        )
        return self.train.subset(torch.from_numpy(index))

    def validation(self) -> LabelledImages:
        index = holdout_indices(self.train.labels.numpy(), num_classes=self.train.num_classes,
                                per_class=self.holdout_per_class, seed=self.holdout_seed)
        return self.train.subset(torch.from_numpy(index))


# ---------------------------------------------------------------- running a cell


@dataclass
class BenchmarkSpec:
    """Everything the benchmark varies or holds fixed (the config's eval.downstream, typed)."""

    arms: list[str]
    ks: list[int]
    seeds: list[int]
    recipe: Recipe
    augment: list[str] = field(default_factory=lambda: ["crop"])
    hflip: bool = False
    synthetic: list[SyntheticSetting] = field(default_factory=lambda: [SyntheticSetting()])
    epochs: float | None = None  # passes over an arm's real images; raises recipe.steps where it is short
    classifier: str = "small-cnn"
    classifier_args: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # trained classifiers reused across runs (fitcache.py); None: always train

    def __post_init__(self) -> None:
        self.arms = check_arms(self.arms)
        for name, values in (("ks", self.ks), ("seeds", self.seeds)):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct ints, got {list(values)}")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"every k must be at least 1, got {list(self.ks)}")
        if not self.augment:
            raise ValueError("augment needs at least one conventional recipe to validate (e.g. [crop])")
        for recipe in self.augment:
            parse_recipe(recipe)
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive or null, got {self.epochs}")

    def steps_for(self, n_images: int) -> int:
        if self.epochs is None:
            return self.recipe.steps
        return max(self.recipe.steps, math.ceil(self.epochs * n_images / self.recipe.batch_size))


SyntheticSource = Callable[[int, int], LabelledImages]  # (k, seed) -> one synthetic set of that cell


def run_downstream(
    *,
    pool: Pool,
    test: LabelledImages | None,
    synthetic: dict[str, SyntheticSource] | None,
    spec: BenchmarkSpec,
    device: str | torch.device = "cpu",
    workers: int = 1,
) -> DownstreamResult:
    """Every arm of every (k, seed) cell; ``test=None`` tunes on validation only and never reads a test split.

    ``synthetic`` names the candidate sets of each cell (e.g. exports at several guidance scales, from several
    checkpoints, or real-guided at several strengths): every synthetic arm tries each set with each setting,
    and validation chooses. ``workers`` > 1 runs cells in that many processes of one CPU thread each (the
    sources must then be picklable, e.g. :class:`ExportPattern`); a cell's result does not depend on where
    it ran.
    """
    if test is not None and test.class_map != pool.train.class_map:
        raise ValueError(f"test classes {test.class_map.names} differ from training classes {pool.train.class_map.names}")
    if any(ARMS[a].synthetic for a in spec.arms) and not synthetic:
        needs = [a for a in spec.arms if ARMS[a].synthetic]
        raise ValueError(f"arms {needs} need a synthetic set (eval.downstream.synthetic); drop them or give one")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    device = torch.device(device)
    jobs = [(pool, k, seed, test, synthetic, spec, device) for k in spec.ks for seed in spec.seeds]
    if workers == 1:
        outcomes = [_run_cell(*job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child of a process that already ran torch's thread pools can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as executor:
            outcomes = list(executor.map(_run_cell, *zip(*jobs)))
    runs = [r for outcome in outcomes for r in outcome[0]]
    candidates = [c for outcome in outcomes for c in outcome[1]]
    memorisation = [m for outcome in outcomes for m in outcome[2]]
    settings = {
        "classifier": spec.classifier, "classifier_args": dict(spec.classifier_args), "recipe": asdict(spec.recipe),
        "epochs": spec.epochs, "augment": list(spec.augment), "hflip": spec.hflip,
        "synthetic": [asdict(s) for s in spec.synthetic], "val_images": pool.holdout_per_class * pool.train.num_classes,
        "val_per_class": pool.holdout_per_class, "test_images": None if test is None else len(test),
    }
    return DownstreamResult(tuple(pool.train.class_map.names), spec.arms, list(spec.ks), list(spec.seeds), runs,
                            candidates, settings, memorisation)


def _run_cell(
    pool: Pool, k: int, seed: int, test: LabelledImages | None, synthetic: dict[str, SyntheticSource] | None,
    spec: BenchmarkSpec, device: torch.device,
) -> tuple[list[RunResult], list[Candidate], list[dict[str, Any]]]:
    if not logging.getLogger().handlers:  # a spawned worker: keep the progress lines, no interleaved bars
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        set_progress(False)
    cell = _Cell(pool, k, seed, pool.validation(), test, spec, device)
    memorisation = []
    if synthetic and any(ARMS[a].synthetic for a in spec.arms):
        for name, source in synthetic.items():
            cell.sets[name] = source(k, seed).aligned_to(pool.train.class_map)
            _check_synthetic(cell.sets[name], cell.real(1))
            memorisation.append({"k": k, "seed": seed, "set": name,
                                 **memorisation_report(cell.sets[name], cell.real(1))})
    runs, candidates = [], []
    for arm in progress(spec.arms, desc=f"k={k} seed={seed} arms", unit="arm"):
        run, tried = cell.run_arm(arm)
        runs.append(run)
        candidates.extend(tried)
    return runs, candidates, memorisation


def set_names(entries: Sequence[str | Sequence[str]]) -> list[str]:
    """Short unique names for candidate sets: the last path component, or more of the path where those clash; a
    union of sets (an entry that is a list of patterns) is named by its parts joined with "+"."""
    groups = [(entry,) if isinstance(entry, str) else tuple(entry) for entry in entries]
    patterns = list(dict.fromkeys(p for group in groups for p in group))
    for depth in range(1, 1 + max(len(Path(p).parts) for p in patterns)):
        short = {p: "/".join(Path(p).parts[-depth:]) for p in patterns}
        names = ["+".join(short[p] for p in group) for group in groups]
        if len(set(short.values())) == len(patterns) and len(set(names)) == len(names):
            return names
    raise ValueError(f"synthetic set patterns repeat: {[list(g) if len(g) > 1 else g[0] for g in groups]}")


@dataclass(frozen=True)
class ExportPattern:
    """(k, seed) -> the augmentation set at ``pattern`` with {k} and {seed} filled in, refused when its model
    trained on other real images than the cell's (see ``check_export_training_data``). Picklable."""

    pattern: str
    source: str
    resolution: int
    channels: int
    holdout: tuple[int, int]

    def paths(self, k: int, seed: int) -> list[Path]:
        return [Path(self.pattern.format(k=k, seed=seed))]

    def __call__(self, k: int, seed: int) -> LabelledImages:
        [path] = self.paths(k, seed)
        check_export_training_data(path, source=self.source, k=k, seed=seed, holdout=self.holdout)
        return load_export(path, resolution=self.resolution, channels=self.channels)


@dataclass(frozen=True)
class SetUnion:
    """(k, seed) -> the images of several of the cell's sets as one candidate (e.g. sampled and real-guided
    images together: more distinct images for the same number of synthetic views per batch). Picklable."""

    parts: tuple[ExportPattern, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise ValueError(f"a union of synthetic sets needs at least two, got {len(self.parts)}")

    def paths(self, k: int, seed: int) -> list[Path]:
        return [path for part in self.parts for path in part.paths(k, seed)]

    def __call__(self, k: int, seed: int) -> LabelledImages:
        return LabelledImages.concat([part(k, seed) for part in self.parts])


def _check_synthetic(synthetic: LabelledImages, real: LabelledImages) -> None:
    if synthetic.images.shape[1:] != real.images.shape[1:]:
        raise ValueError(
            f"synthetic images are {tuple(synthetic.images.shape[1:])} but real ones {tuple(real.images.shape[1:])}; "
            "load both at the same resolution and channels"
        )
    if not len(synthetic):
        raise ValueError("the synthetic set is empty")


class _Cell:
    """One (k, seed): its data, its teacher, and the choices its arms made (real+aug's recipe is reused)."""

    def __init__(self, pool: Pool, k: int, seed: int, val: LabelledImages, test: LabelledImages | None,
                 spec: BenchmarkSpec, device: torch.device):
        self.pool, self.k, self.seed, self.val, self.test, self.spec, self.device = pool, k, seed, val, test, spec, device
        self.sets: dict[str, LabelledImages] = {}  # the candidate synthetic sets by name
        self._real: dict[int, LabelledImages] = {}
        self.chosen_augment: str | None = None
        self.real_models: list[torch.nn.Module] = []  # every classifier trained on the k real images alone
        self._teacher: dict[str, torch.Tensor] = {}
        self.cache = None if spec.cache_dir is None else FitCache(spec.cache_dir)

    def real(self, multiple: int) -> LabelledImages:
        if multiple not in self._real:
            self._real[multiple] = self.pool.kshot(multiple * self.k, self.seed)
        return self._real[multiple]

    def teacher_probs(self, name: str) -> torch.Tensor:
        """(N_syn, K): the mean softmax over the cell's real-only classifiers (an ensemble that never saw a
        synthetic or validation image) for each image of synthetic set ``name``."""
        if name not in self._teacher:
            if not self.real_models:
                raise ValueError("a teacher filter or soft labels need the real or real+aug arm, whose classifiers "
                                 "form the teacher; add one of them to the arms")
            self._teacher[name] = torch.stack(
                [predict_proba(m, self.sets[name].images, device=self.device) for m in self.real_models]
            ).mean(dim=0)
        return self._teacher[name]

    def _fit(self, *, real: LabelledImages | None, synthetic: LabelledImages | None, augment: str | None,
             setting: SyntheticSetting | None, targets: torch.Tensor | None) -> FitResult:
        n_real = len(real) if real is not None else 0
        recipe = Recipe(**{**asdict(self.spec.recipe), "steps": self.spec.steps_for(n_real or len(synthetic))})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same initial weights for every arm and candidate of a seed
            model = build_classifier(self.spec.classifier, num_classes=self.pool.train.num_classes,
                                     in_channels=self.pool.train.images.shape[1], **self.spec.classifier_args)
            aug = None if augment is None else Augmenter(augment, size=self.pool.train.images.shape[-1],
                                                         hflip=self.spec.hflip)
            mix = SyntheticMix() if setting is None else SyntheticMix(setting.ratio, setting.weight)
            key = None
            if self.cache is not None:
                key = self.cache.key({
                    "classifier": self.spec.classifier, "classifier_args": self.spec.classifier_args,
                    "recipe": asdict(recipe), "augment": augment, "hflip": self.spec.hflip, "seed": self.seed,
                    "mix": [mix.ratio, mix.weight], "val": self.val.content_hash(),
                    "real": None if real is None else real.content_hash(),
                    "synthetic": None if synthetic is None else synthetic.content_hash(),
                    "targets": tensor_digest(targets),
                }, self.device)
                cached = self.cache.load(key, model)
                if cached is not None:
                    return cached
            fit = fit_classifier(model, real=real, synthetic=synthetic, augment=aug, recipe=recipe, seed=self.seed,
                                 device=self.device, mix=mix, synthetic_targets=targets, val=self.val)
            if key is not None:
                self.cache.save(key, fit)
            return fit

    def _candidates(self, arm_name: str) -> list[tuple[str, dict[str, Any]]]:
        arm = ARMS[arm_name]
        if not arm.synthetic:
            recipes = self.spec.augment if arm_name == "real+aug" else [self.chosen_augment] if arm.augment else [None]
            return [(recipe or "none", {"augment": recipe, "setting": None}) for recipe in recipes]
        augment = self.chosen_augment if arm.augment else None
        prefix = (lambda name: f"{name}: ") if len(self.sets) > 1 else (lambda name: "")
        if arm.real == 0:  # the diagnostic: each set as exported, nothing else tuned
            return [(prefix(name) + "as exported", {"augment": None, "setting": None, "set": name})
                    for name in self.sets]
        return [(prefix(name) + s.describe() + (f", {augment}" if augment else ""),
                 {"augment": augment, "setting": s, "set": name})
                for name in self.sets for s in self.spec.synthetic]

    def run_arm(self, arm_name: str) -> tuple[RunResult, list[Candidate]]:
        arm = ARMS[arm_name]
        real = self.real(arm.real) if arm.real else None
        tried: list[tuple[Candidate, FitResult]] = []
        for label, options in self._candidates(arm_name):
            start = time.perf_counter()
            synthetic, targets = (self._synthetic_for(options["set"], options["setting"]) if arm.synthetic
                                  else (None, None))
            if arm.synthetic and synthetic is None:
                logger.warning("k=%d seed %d %s [%s]: the teacher filter keeps no synthetic image; candidate skipped",
                               self.k, self.seed, arm_name, label)
                continue
            fit = self._fit(real=real, synthetic=synthetic, augment=options["augment"], setting=options["setting"],
                            targets=targets)
            n_train = (len(real) if real is not None else 0) + (len(synthetic) if synthetic is not None else 0)
            candidate = Candidate(arm_name, self.k, self.seed, label, float(fit.best_val), fit.best_step, fit.steps,
                                  fit.still_rising, fit.real_seen, fit.synthetic_seen, n_train,
                                  time.perf_counter() - start)
            tried.append((candidate, fit))
            if arm.real == 1 and not arm.synthetic:
                self.real_models.append(fit.model)
            logger.info("k=%d seed %d %s [%s]: validation %.4f at step %d/%d (%.0f s)", self.k, self.seed, arm_name,
                        label, candidate.val, fit.best_step, fit.steps, candidate.seconds)
        if not tried:
            raise ValueError(f"every candidate of arm {arm_name} at k={self.k}, seed {self.seed} was skipped: the "
                             "teacher filter thresholds keep no synthetic image; lower eval.downstream.syn_filter")
        best, fit = max(tried, key=lambda pair: pair[0].val)  # first of equals: the earlier candidate
        if arm_name == "real+aug":
            self.chosen_augment = best.setting
        accuracy = per_class = None
        if self.test is not None:  # the one read of the test split for this arm and cell
            accuracy, classes = evaluate_classifier(fit.model, self.test, device=self.device)
            per_class = classes.tolist()
            logger.info("k=%d seed %d %s: chose [%s], test accuracy %.4f", self.k, self.seed, arm_name, best.setting,
                        accuracy)
        run = RunResult(arm_name, self.k, self.seed, best.setting, best.val, accuracy, per_class, best.train_images,
                        best.best_step, best.steps, best.still_rising, best.real_seen)
        return run, [c for c, _ in tried]

    def _synthetic_for(
        self, name: str, setting: SyntheticSetting | None
    ) -> tuple[LabelledImages | None, torch.Tensor | None]:
        """The images of set ``name`` (and soft targets) a setting trains on; (None, None) if its filter keeps none."""
        images = self.sets[name]
        if setting is None or not setting.needs_teacher:
            return images, None
        probs = self.teacher_probs(name)  # (N, K)
        keep = torch.ones(len(images), dtype=torch.bool)
        if setting.filter is not None:
            keep = probs[torch.arange(len(probs)), images.labels] >= setting.filter
            if not keep.any():
                return None, None
        kept = images.subset(keep)
        return kept, (probs[keep] if setting.labels == "soft" else None)


# ---------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _gain(row: dict[str, Any], base: str) -> str:
    mean, ci = row.get(f"gain_vs_{base}"), row.get(f"gain_vs_{base}_ci95")
    if mean is None:
        return "—"
    return f"{100 * mean:+.2f}" + ("" if ci is None or math.isnan(ci) else f" ± {100 * ci:.2f}")


def markdown_table(result: DownstreamResult) -> str:
    """The summary in Markdown, accuracies in percent; gains are paired by seed, ± the 95% interval."""
    has = [b for b in BASELINES if b in result.arms]
    header = ["k", "arm", "train images", "test acc. %", "std", "val. acc. %"] + [f"gain vs {b}" for b in has]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.summary():
        cells = [str(row["k"]), row["arm"], str(row["train_images"]), _pct(row["mean"]), _pct(row["std"]),
                 _pct(row["val_mean"])] + [_gain(row, b) for b in has]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def choices_markdown(result: DownstreamResult) -> str:
    """What each arm chose on validation, per k: the setting and how many seeds chose it."""
    lines = ["| k | arm | chosen on validation (seeds) | best step / budget (mean) | budget short in |",
             "|---|---|---|---|---|"]
    for k in result.ks:
        for arm in result.arms:
            runs = [r for r in result.runs if r.arm == arm and r.k == k]
            counts: dict[str, int] = {}
            for r in runs:
                counts[r.setting] = counts.get(r.setting, 0) + 1
            chosen = "; ".join(f"{name} ({n})" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            steps = f"{np.mean([r.best_step for r in runs]):.0f} / {runs[0].steps}"
            short = sum(r.still_rising for r in runs)
            lines.append(f"| {k} | {arm} | {chosen} | {steps} | {short} of {len(runs)} seeds |")
    return "\n".join(lines) + "\n"


def plot_kshot(result: DownstreamResult, path: Path) -> Path:
    """Test accuracy against k per arm (mean ± std over seeds); synthetic arms dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, arm in enumerate(result.arms):
        means = np.array([100 * result.accuracies(arm, k).mean() for k in result.ks])
        stds = np.array([100 * _std(result.accuracies(arm, k)) for k in result.ks])
        style = "--" if ARMS[arm].synthetic else "-"
        ax.errorbar(result.ks, means, yerr=stds, fmt="o" + style, capsize=4, label=arm, color=f"C{i}")
    if len(result.ks) > 1:
        ax.set_xscale("log")
    ax.set_xticks(result.ks, [str(k) for k in result.ks])
    ax.minorticks_off()
    ax.set_xlabel("real labelled images per class (k)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"downstream accuracy, {len(result.seeds)} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: f"{v:.6f}" if isinstance(v, float) else v for c, v in row.items()})


def write_report(result: DownstreamResult, out_dir: str | Path, *, title: str = "Downstream benchmark") -> dict[str, Path]:
    """``runs.csv`` (one row per arm, k and seed), ``candidates.csv`` (every validation score),
    ``summary.csv``, ``chosen.json``, ``memorisation.csv``, ``report.md`` and ``kshot.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in (
        ("runs", "runs.csv"), ("candidates", "candidates.csv"), ("summary", "summary.csv"),
        ("chosen", "chosen.json"), ("memorisation", "memorisation.csv"), ("report", "report.md"),
        ("plot", "kshot.png"),
    )}
    tested = all(r.accuracy is not None for r in result.runs)
    run_rows = []
    for r in result.runs:
        row = {k: v for k, v in asdict(r).items() if k != "per_class"}
        if r.per_class is not None:
            row |= {f"acc_{name}": a for name, a in zip(result.class_names, r.per_class)}
        run_rows.append(row)
    _write_csv(paths["runs"], run_rows)
    _write_csv(paths["candidates"], [asdict(c) for c in result.candidates])
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for r in result.runs:
        chosen.setdefault(f"k={r.k}", {}).setdefault(f"seed={r.seed}", {})[r.arm] = {"setting": r.setting, "val": r.val}
    paths["chosen"].write_text(json.dumps(chosen, indent=2) + "\n")
    if result.memorisation:
        _write_csv(paths["memorisation"], [{k: v for k, v in m.items() if k != "per_class"} for m in result.memorisation])
    s = result.settings
    recipe = s["recipe"]
    budget = (f"{recipe['steps']} steps, or {s['epochs']:g} passes over an arm's real images where that is more"
              if s.get("epochs") else f"{recipe['steps']} steps")
    lines = [
        f"# {title}",
        "",
        f"Classifier `{s['classifier']}` from scratch, AdamW lr {recipe['lr']:g} with cosine decay, "
        f"{recipe['batch_size']} real images in every batch (synthetic images on top), {budget}; the checkpoint "
        f"with the best accuracy on {s['val_images']} held-out validation images ({s['val_per_class']} per class, "
        "never trained on) is kept, every setting is chosen on validation, and the test split is read once per "
        f"arm and seed. Seeds {result.seeds} each redraw the k-shot subset and the initialisation; gains are paired "
        "by seed, ± the half-width of the 95% t-interval.",
        "",
    ]
    if tested:
        _write_csv(paths["summary"], result.summary())
        plot_kshot(result, paths["plot"])
        lines += [f"Test images: {s['test_images']}.", "", markdown_table(result), "![accuracy against k](kshot.png)", ""]
    else:
        lines += ["Tuning only: no test split was read.", ""]
    lines += ["## Choices made on validation", "", choices_markdown(result)]
    if result.memorisation:
        lines += ["## Memorisation", "",
                  "Share of synthetic images whose nearest k-shot training image is under a third of the distance to "
                  "the second nearest (Gu et al. 2023), in pixel space:", "",
                  "| k | seed | set | synthetic | near copies | share |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['k']} | {m['seed']} | {m['set']} | {m['n']} | {m['near_copies']} | {100 * m['share']:.2f} % |"
                  for m in result.memorisation]
        lines.append("")
    if tested:
        for k in result.ks:
            means = result.per_class_means(k)
            lines += [f"## Per-class test accuracy (%) at k={k}, mean over seeds", "",
                      "| class | " + " | ".join(result.arms) + " |", "|" + "---|" * (len(result.arms) + 1)]
            lines += ["| " + " | ".join([name] + [_pct(float(means[a][i])) for a in result.arms]) + " |"
                      for i, name in enumerate(result.class_names)]
            lines.append("")
    paths["report"].write_text("\n".join(lines))
    logger.info("downstream report written to %s", paths["report"])
    return paths


def log_to_wandb(result: DownstreamResult, paths: dict[str, Path], run) -> None:
    """The summary and candidate tables and the k-shot plot into the W&B ``run`` (see diffaug.tracking)."""
    import wandb

    summary = result.summary()
    columns = list(summary[0])
    candidates = [asdict(c) for c in result.candidates]
    run.log({
        "downstream/summary": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in summary]),
        "downstream/candidates": wandb.Table(columns=list(candidates[0]),
                                             data=[list(c.values()) for c in candidates]),
        "downstream/kshot": wandb.Image(str(paths["plot"])),
    })
    for row in summary:
        run.summary[f"downstream/k{row['k']}/{row['arm']}/mean"] = row["mean"]
        run.summary[f"downstream/k{row['k']}/{row['arm']}/std"] = row["std"]
