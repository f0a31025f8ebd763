"""The downstream augmentation benchmark: does adding the synthetic set help a classifier?

Arms (the same fixed recipe and seeds for each; seed s gives every arm the same initialisation):
  (a) real           the k-shot real training images
  (b) real+aug       (a) with conventional augmentation
  (c) real+syn       (a) plus the exported synthetic set
  (d) real+aug+syn   (c) with conventional augmentation on every image
  (e) syn            the synthetic set alone
Reported: test accuracy mean and spread per arm, the gain over (a) and over (b) (paired by seed), and
per-class accuracy, as CSV, Markdown and a PNG plot.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaug.evaluation.classifiers import build_classifier
from diffaug.evaluation.data import LabelledImages
from diffaug.evaluation.recipe import ConventionalAugment, Recipe, evaluate_classifier, fit_classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    letter: str
    real: bool
    augment: bool
    synthetic: bool
    description: str


ARMS: dict[str, Arm] = {
    "real": Arm("a", True, False, False, "real images only"),
    "real+aug": Arm("b", True, True, False, "real + conventional augmentation"),
    "real+syn": Arm("c", True, False, True, "real + synthetic set"),
    "real+aug+syn": Arm("d", True, True, True, "real + conventional augmentation + synthetic set"),
    "syn": Arm("e", False, False, True, "synthetic set only"),
}
BASELINES = ("real", "real+aug")


def check_arms(arms: list[str]) -> list[str]:
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown or no arms {unknown or arms}; choose from {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms repeat: {arms}")
    return sorted(arms, key=lambda a: ARMS[a].letter)


@dataclass
class RunResult:
    arm: str
    seed: int
    accuracy: float
    per_class: list[float]
    train_images: int
    seconds: float


@dataclass
class DownstreamResult:
    class_names: tuple[str, ...]
    arms: list[str]
    seeds: list[int]
    runs: list[RunResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def accuracies(self, arm: str) -> np.ndarray:
        """(S,) accuracy per seed, in seed order."""
        by_seed = {r.seed: r.accuracy for r in self.runs if r.arm == arm}
        return np.array([by_seed[s] for s in self.seeds])

    def summary(self) -> list[dict[str, Any]]:
        """One row per arm: mean, sample standard deviation, min, max, and paired gains over the baselines."""
        rows = []
        for arm in self.arms:
            acc = self.accuracies(arm)
            row: dict[str, Any] = {
                "arm": f"({ARMS[arm].letter}) {arm}",
                "mean": acc.mean(),
                "std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
                "min": acc.min(),
                "max": acc.max(),
                "seeds": len(acc),
            }
            for base in BASELINES:
                if base in self.arms:
                    gain = acc - self.accuracies(base)
                    row[f"gain_vs_{base}"] = gain.mean()
                    row[f"gain_vs_{base}_std"] = gain.std(ddof=1) if len(gain) > 1 else 0.0
            rows.append(row)
        return rows

    def per_class_means(self) -> dict[str, np.ndarray]:
        """arm -> (K,) per-class accuracy averaged over seeds."""
        return {
            arm: np.nanmean(np.array([r.per_class for r in self.runs if r.arm == arm]), axis=0) for arm in self.arms
        }


def run_downstream(
    *,
    real_train: LabelledImages,
    test: LabelledImages,
    synthetic: LabelledImages | None,
    arms: list[str],
    seeds: list[int],
    recipe: Recipe,
    augment: ConventionalAugment,
    classifier: str = "small-cnn",
    classifier_args: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> DownstreamResult:
    """Train and test one classifier per (arm, seed)."""
    arms = check_arms(list(arms))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds}")
    if test.class_map != real_train.class_map:
        raise ValueError(f"test classes {test.class_map.names} differ from training classes {real_train.class_map.names}")
    if synthetic is not None:
        synthetic = synthetic.aligned_to(real_train.class_map)
        if synthetic.images.shape[1:] != real_train.images.shape[1:]:
            raise ValueError(
                f"synthetic images are {tuple(synthetic.images.shape[1:])} but real ones "
                f"{tuple(real_train.images.shape[1:])}; load both at the same resolution and channels"
            )
    needs_syn = [a for a in arms if ARMS[a].synthetic]
    if needs_syn and (synthetic is None or not len(synthetic)):
        raise ValueError(f"arms {needs_syn} need a synthetic set; pass the export folder or drop those arms")
    device = torch.device(device)
    in_channels = real_train.images.shape[1]
    runs: list[RunResult] = []
    for seed in seeds:
        for arm_name in arms:
            arm = ARMS[arm_name]
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the same initial weights for every arm of a seed
                model = build_classifier(
                    classifier, num_classes=real_train.num_classes, in_channels=in_channels, **(classifier_args or {})
                )
                fit_classifier(
                    model,
                    real=real_train if arm.real else None,
                    synthetic=synthetic if arm.synthetic else None,
                    augment=augment if arm.augment else None,
                    recipe=recipe,
                    seed=seed,
                    device=device,
                )
            accuracy, per_class = evaluate_classifier(model, test, device=device)
            seconds = time.perf_counter() - start
            train_images = (len(real_train) if arm.real else 0) + (len(synthetic) if arm.synthetic else 0)
            runs.append(RunResult(arm_name, seed, accuracy, per_class.tolist(), train_images, seconds))
            logger.info("arm %s seed %d: test accuracy %.4f (%.0f s)", arm_name, seed, accuracy, seconds)
    settings = {
        "classifier": classifier,
        "classifier_args": dict(classifier_args or {}),
        "recipe": vars(recipe),
        "augment": vars(augment),
        "real_per_class": real_train.class_counts().tolist(),
        "synthetic_per_class": None if synthetic is None else synthetic.class_counts().tolist(),
        "test_images": len(test),
    }
    return DownstreamResult(tuple(real_train.class_map.names), arms, list(seeds), runs, settings)


# ---------------------------------------------------------------- report


def _pct(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _signed_pct(value: float) -> str:
    return f"{100 * value:+.2f}"


def markdown_table(result: DownstreamResult) -> str:
    """The summary table in Markdown, accuracies in percent."""
    has = [b for b in BASELINES if b in result.arms]
    header = ["arm", "train images", "test acc. mean", "std", "min", "max"] + [f"gain vs ({ARMS[b].letter})" for b in has]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    images = {r.arm: r.train_images for r in result.runs}
    for arm, row in zip(result.arms, result.summary()):
        cells = [row["arm"], str(images[arm]), _pct(row["mean"]), _pct(row["std"]), _pct(row["min"]), _pct(row["max"])]
        for base in has:
            cells.append(
                "—" if arm == base else f"{_signed_pct(row[f'gain_vs_{base}'])} ± {_pct(row[f'gain_vs_{base}_std'])}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_markdown(result: DownstreamResult) -> str:
    means = result.per_class_means()
    header = ["class"] + [f"({ARMS[a].letter}) {a}" for a in result.arms]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, name in enumerate(result.class_names):
        lines.append("| " + " | ".join([name] + [_pct(float(means[a][k])) for a in result.arms]) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def plot_accuracy(result: DownstreamResult, path: Path) -> Path:
    """Accuracy per arm: one dot per seed, the mean (diamond) with a ±1 std bar; synthetic arms in orange."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(result.arms), 4.0))
    for x, arm in enumerate(result.arms):
        acc = 100 * result.accuracies(arm)
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        # Points, not bars: the axis does not start at zero, and bars would exaggerate the differences.
        colour = "#3182bd" if not ARMS[arm].synthetic else "#e6550d"
        ax.errorbar(x, acc.mean(), yerr=std, fmt="D", color=colour, markersize=8, capsize=6)
        ax.scatter(np.full(len(acc), x) + np.linspace(-0.15, 0.15, len(acc)), acc, color="black", s=12, zorder=3)
    ax.set_xlim(-0.6, len(result.arms) - 0.4)
    ax.set_xticks(range(len(result.arms)), [f"({ARMS[a].letter})\n{a}" for a in result.arms])
    low = min(100 * result.accuracies(a).min() for a in result.arms)
    ax.set_ylim(max(0.0, low - 5), min(100.0, 100 * max(result.accuracies(a).max() for a in result.arms) + 3))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"downstream accuracy, {len(result.seeds)} seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: DownstreamResult, out_dir: str | Path, *, title: str = "Downstream benchmark") -> dict[str, Path]:
    """``runs.csv`` (one row per arm and seed), ``summary.csv``, ``per_class.csv``, ``report.md`` and
    ``accuracy.png`` in ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in (
        ("runs", "runs.csv"), ("summary", "summary.csv"), ("per_class", "per_class.csv"),
        ("report", "report.md"), ("plot", "accuracy.png"),
    )}
    _write_csv(
        paths["runs"],
        ["arm", "seed", "accuracy", "train_images", "seconds", *[f"acc_{n}" for n in result.class_names]],
        [[r.arm, r.seed, f"{r.accuracy:.6f}", r.train_images, f"{r.seconds:.1f}", *[f"{a:.6f}" for a in r.per_class]]
         for r in result.runs],
    )
    summary = result.summary()
    columns = list(summary[0])
    _write_csv(paths["summary"], columns,
               [[f"{v:.6f}" if isinstance(v, float) else v for v in (row.get(c) for c in columns)] for row in summary])
    means = result.per_class_means()
    _write_csv(paths["per_class"], ["class", *result.arms],
               [[name, *[f"{means[a][k]:.6f}" for a in result.arms]] for k, name in enumerate(result.class_names)])
    plot_accuracy(result, paths["plot"])
    s = result.settings
    recipe = s.get("recipe", {})
    lines = [
        f"# {title}",
        "",
        f"Classifier `{s.get('classifier')}` trained from scratch with one fixed recipe per arm "
        f"({recipe.get('steps')} AdamW steps, batch {recipe.get('batch_size')}, lr {recipe.get('lr')}, cosine decay), "
        f"seeds {result.seeds}; test accuracy on {s.get('test_images')} held-out real images. "
        "Gains are paired by seed (mean ± std of the per-seed differences).",
        "",
        f"Real training images per class: {s.get('real_per_class')}; synthetic: {s.get('synthetic_per_class')}.",
        "",
        markdown_table(result),
        "![accuracy per arm](accuracy.png)",
        "",
        "## Per-class test accuracy (%), mean over seeds",
        "",
        per_class_markdown(result),
    ]
    paths["report"].write_text("\n".join(lines))
    logger.info("downstream report written to %s", paths["report"])
    return paths


def log_to_wandb(
    result: DownstreamResult, paths: dict[str, Path], *, project: str, entity: str | None, mode: str, name: str
) -> None:
    """The summary table, per-run table and plot as one W&B run (mode offline writes it locally)."""
    import wandb

    run = wandb.init(project=project, entity=entity, mode=mode, name=name, job_type="downstream",
                     config=result.settings, reinit=True)
    try:
        summary = result.summary()
        columns = list(summary[0])
        run.log({
            "downstream/summary": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in summary]),
            "downstream/runs": wandb.Table(
                columns=["arm", "seed", "accuracy", *result.class_names],
                data=[[r.arm, r.seed, r.accuracy, *r.per_class] for r in result.runs],
            ),
            "downstream/accuracy": wandb.Image(str(paths["plot"])),
        })
        for row, arm in zip(summary, result.arms):
            run.summary[f"downstream/{arm}/mean"] = row["mean"]
            run.summary[f"downstream/{arm}/std"] = row["std"]
    finally:
        run.finish()
