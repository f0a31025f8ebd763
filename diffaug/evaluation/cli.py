"""``diffaug eval downstream|fid|bpd CONFIG.yaml... [key=value...] [--export DIR] [--out DIR]``.

The config is the training run's: ``data.*`` names the real data (and ``data.per_class_limit`` /
``data.seed`` the k-shot subset the model was trained on), ``eval.*`` the evaluation settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from diffaug import tracking
from diffaug.config import ConfigError, load_config
from diffaug.config.argv import parse_items_anywhere, split_items
from diffaug.evaluation.configured import build_extractor, evaluation_device, real_split
from diffaug.evaluation.data import load_export
from diffaug.progress import progress, set_progress

logger = logging.getLogger(__name__)

# Each command imports its own machinery (the downstream benchmark, the quality metrics, the likelihood and
# the model loader) when it runs, so that one command does not load the others'.


def _export_dir(cfg: DictConfig, given: str | None) -> Path:
    return Path(given or cfg.eval.export_dir or cfg.export.out_dir or Path(cfg.run_dir) / "export")


def _out_dir(cfg: DictConfig, given: str | None, leaf: str) -> Path:
    return Path(given) if given else Path(cfg.eval.out_dir or Path(cfg.run_dir) / "eval") / leaf


def _synthetic_sources(cfg: DictConfig, args: argparse.Namespace, *, holdout: tuple[int, int]):
    """Set name -> source of every candidate synthetic set (--export, else eval.downstream.synthetic): an
    ExportPattern, or a SetUnion for an entry that lists several patterns."""
    from diffaug.evaluation.downstream import ExportPattern, SetUnion, set_names

    # Each entry is a str or a list of them (checked when the config loaded).
    listed = [e if isinstance(e, str) else tuple(e) for e in cfg.eval.downstream.synthetic]
    entries = [args.export] if args.export else listed
    entries = entries or [str(_export_dir(cfg, None))]

    def pattern(p: str) -> ExportPattern:
        return ExportPattern(p, str(cfg.data.source), int(cfg.data.resolution), int(cfg.data.channels), holdout)

    return {name: pattern(entry) if isinstance(entry, str) else SetUnion(tuple(pattern(p) for p in entry))
            for name, entry in zip(set_names(entries), entries)}


def _downstream_spec(cfg: DictConfig):
    from diffaug.evaluation.downstream import BenchmarkSpec, synthetic_grid
    from diffaug.evaluation.recipe import Recipe

    s = cfg.eval.downstream
    ks = [int(k) for k in s.ks] or ([int(cfg.data.per_class_limit)] if cfg.data.per_class_limit else [])
    if not ks:
        raise ConfigError("eval.downstream.ks is empty and data.per_class_limit is null: give the k values, "
                          "e.g. eval.downstream.ks=[10,50]")
    recipe = Recipe(steps=int(s.steps), batch_size=int(s.batch_size), lr=float(s.lr), weight_decay=float(s.weight_decay),
                    label_smoothing=float(s.label_smoothing), eval_every=int(s.eval_every))
    return BenchmarkSpec(
        arms=list(s.arms), ks=ks, seeds=[int(x) for x in s.seeds], recipe=recipe, augment=list(s.augment),
        hflip=bool(s.aug_hflip), epochs=None if s.epochs is None else float(s.epochs),
        synthetic=synthetic_grid(list(s.syn_ratio), list(s.syn_weight), list(s.syn_filter), list(s.syn_labels)),
        classifier=str(s.classifier), classifier_args=dict(s.classifier_args),
        cache_dir=None if s.cache is None else str(s.cache),
    )


def _downstream(cfg: DictConfig, args: argparse.Namespace, *, tune_only: bool = False) -> int:
    from diffaug.evaluation.downstream import ARMS, Pool, run_downstream, write_report

    s = cfg.eval.downstream
    spec = _downstream_spec(cfg)  # every setting checked before any data is read
    if cfg.data.holdout_per_class is None:
        raise ConfigError(
            "the downstream benchmark chooses every setting on a validation split that no model trained on: set "
            "data.holdout_per_class (e.g. 100), and train the diffusion models with the same value so they never "
            "see those images"
        )
    holdout = (int(cfg.data.holdout_per_class), int(cfg.data.holdout_seed))
    pool = Pool(real_split(cfg, split="train"), *holdout)
    synthetic = (_synthetic_sources(cfg, args, holdout=holdout)
                 if any(ARMS[a].synthetic for a in spec.arms) else None)
    test = None if tune_only else real_split(cfg, split=s.test_split, max_items=s.test_max_items)
    result = run_downstream(pool=pool, test=test, synthetic=synthetic, spec=spec, device=evaluation_device(s.device),
                            workers=int(s.workers))
    leaf = "tune" if tune_only else "downstream"
    paths = write_report(result, _out_dir(cfg, args.out, leaf), title=f"Downstream benchmark: {cfg.name}")
    if tracking.enabled(cfg) and not tune_only:
        sets = {path for source in (synthetic or {}).values()
                for k in spec.ks for seed in spec.seeds for path in source.paths(k, seed)}
        _log_downstream_to_wandb(cfg, result, paths, sorted(sets))
    print(paths["report"].read_text().split("## Memorisation")[0].split("## Per-class")[0].rstrip())
    print(f"\nreport: {paths['report']}")
    return 0


def _tune(cfg: DictConfig, args: argparse.Namespace) -> int:
    return _downstream(cfg, args, tune_only=True)


def _log_downstream_to_wandb(cfg: DictConfig, result, paths: dict[str, Path], sets: Sequence[Path],
                             directory: Path | None = None) -> None:
    """The report's tables and plot as a W&B run of its own that uses the artifacts of the sets it read."""
    from diffaug.evaluation.downstream import log_to_wandb

    with tracking.open_run(cfg, name=f"{cfg.name}-downstream", job_type="downstream",
                           directory=directory or cfg.run_dir, config=result.settings) as run:
        tracking.use(run, [tracking.set_artifact(path) for path in sets])
        log_to_wandb(result, paths, run)


def _log_quality_to_wandb(cfg: DictConfig, report: dict, directory: Path | None = None,
                          export_dir: Path | None = None) -> None:
    """One W&B run of its own for the report (files under ``directory``/wandb, else the run directory's),
    using the artifact of the set it measured."""
    with tracking.open_run(cfg, name=f"{cfg.name}-quality", job_type="quality",
                           directory=directory or cfg.run_dir) as run:
        if export_dir is not None:
            tracking.use(run, [tracking.set_artifact(export_dir)])
        run.log({f"quality/{key}": value for key, value in report["overall"].items() if isinstance(value, float)}
                | {f"quality/{name}/fid": m["fid"] for name, m in report["per_class"].items()})


def _reconstructed(cfg: DictConfig, images: Tensor, device: torch.device) -> Tensor | None:
    """A latent model's reference images through its autoencoder (posterior mean, decoded), uint8; None for
    pixel models."""
    if cfg.model.get("autoencoder") is None:
        return None
    from diffaug.data import to_model_range, to_uint8
    from diffaug.nets.autoencoder import load_frozen

    autoencoder = load_frozen(cfg.model.autoencoder, channels=cfg.model.autoencoder_channels).to(device)
    out = []
    for chunk in images.split(int(cfg.sampling.microbatch)):  # (n, C, H, W) uint8
        z = autoencoder.sample_latents(*autoencoder.moments(to_model_range(chunk.to(device))), None)  # the mean
        out.append(to_uint8(autoencoder.decode(z)).cpu())
    return torch.cat(out)


def _fid(cfg: DictConfig, args: argparse.Namespace) -> int:
    from diffaug.evaluation.features import FEATURE_EXTRACTORS
    from diffaug.evaluation.quality import sample_quality, write_quality_report

    q = cfg.eval.quality
    device = evaluation_device(q.device)
    FEATURE_EXTRACTORS.get(q.features)  # KeyError listing the extractors before any data is read
    reference = real_split(cfg, split=q.reference_split, max_items=q.reference_max_items)
    export_dir = _export_dir(cfg, args.export)
    synthetic = load_export(
        export_dir, resolution=int(cfg.data.resolution), channels=int(cfg.data.channels),
        max_items=q.max_items,
    )
    extractor = build_extractor(cfg, device)
    report = sample_quality(
        reference, synthetic, extractor=extractor, cache_dir=q.cache_dir, per_class=bool(q.per_class),
        kid_subsets=int(q.kid_subsets), kid_subset_size=int(q.kid_subset_size), nearest_k=int(q.nearest_k),
        is_splits=int(q.is_splits), seed=int(q.seed), reconstructed=_reconstructed(cfg, reference.images, device),
    )
    paths = write_quality_report(report, _out_dir(cfg, args.out, "quality"))
    if tracking.enabled(cfg):
        _log_quality_to_wandb(cfg, report, export_dir=export_dir)
    print(paths["report"].read_text())
    print(json.dumps(report["overall"]))
    return 0


def _bpd(cfg: DictConfig, args: argparse.Namespace) -> int:
    from diffaug.inference import load_for_inference
    from diffaug.diffusion.likelihood import bits_per_dim, dequantize, ode_likelihood

    s = cfg.eval.likelihood
    checkpoint = Path(args.checkpoint or s.checkpoint or Path(cfg.run_dir) / "model.safetensors")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    # Bits/dim evaluates the model itself: the trained denoiser, never a generated set.
    denoiser, process, model_cfg, class_map = load_for_inference(checkpoint, use_ema=True, map_location="cpu")
    if model_cfg.model.autoencoder is not None:
        raise ValueError(
            f"{checkpoint} is a latent model (model.autoencoder={model_cfg.model.autoencoder}): its ODE gives the "
            "likelihood of autoencoder latents, not of images, so bits/dim of pixels is not defined for it; "
            "compare latent models by FID (diffaug eval fid) instead")
    device = evaluation_device(s.device)
    denoiser = denoiser.to(device)
    if process.discrete:
        raise ValueError(
            f"{checkpoint} uses the discrete {process.name} process; bits/dim through the probability-flow "
            "ODE needs a continuous-time one (objective.process=vp, subvp or ve)"
        )
    real = real_split(cfg, split=s.split, max_items=s.max_items)
    real = real.aligned_to(class_map) if s.conditional else real
    generator = torch.Generator().manual_seed(int(s.seed))
    bpd, nfe = [], 0
    for start in progress(range(0, len(real), int(s.batch_size)), desc="bits/dim", unit="batch"):
        images = real.images[start : start + int(s.batch_size)]
        x = dequantize(images, generator).to(device)
        labels = real.labels[start : start + len(images)].to(device) if s.conditional else None
        result = ode_likelihood(
            denoiser, process, x, class_labels=labels, steps=int(s.steps), divergence=s.divergence,
            num_probes=int(s.num_probes), generator=torch.Generator(device).manual_seed(int(s.seed) + start),
        )
        bpd.append(bits_per_dim(result.logp.cpu(), x[0].numel()))
        nfe = result.nfe
        logger.info("bits/dim: %d / %d images", start + len(images), len(real))
    values = torch.cat(bpd)
    report = {
        "checkpoint": str(checkpoint), "split": s.split, "n": len(values), "conditional": bool(s.conditional),
        "bits_per_dim": float(values.mean()), "stderr": float(values.std() / len(values) ** 0.5) if len(values) > 1 else 0.0,
        "steps": int(s.steps), "nfe": nfe, "divergence": s.divergence, "num_probes": int(s.num_probes),
    }
    out = _out_dir(cfg, args.out, "likelihood")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bpd.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['bits_per_dim']:.4f} ± {report['stderr']:.4f} bits/dim over {report['n']} {s.split} images "
          f"({nfe} network calls each)\nreport: {out / 'bpd.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffaug eval", description="Evaluate an exported augmentation set.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("downstream", _downstream, "train classifiers on real / augmented / synthetic arms, choose on validation, "
         "compare test accuracy"),
        ("tune", _tune, "the downstream benchmark's validation search alone: the chosen settings and their "
         "validation scores; never reads the test split"),
        ("fid", _fid, "FID, KID, precision / recall, IS of the exported set against the real data, overall and per class"),
        ("bpd", _bpd, "bits/dim of real images through the probability-flow ODE of a VP / sub-VP / VE model"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("items", nargs="*", metavar="CONFIG_OR_OVERRIDE")
        p.add_argument("--export", default=None, help="augmentation set folder; for downstream / tune {k} and {seed} "
                       "fill in per cell (default: eval.downstream.synthetic, eval.export_dir, export.out_dir, else "
                       "<run_dir>/export)")
        p.add_argument("--out", default=None, help="report folder (default: <eval.out_dir or run_dir/eval>/<command>)")
        p.add_argument("--checkpoint", default=None, help="bpd only: the model (default: eval.likelihood.checkpoint, "
                       "else <run_dir>/model.safetensors)")
        p.set_defaults(func=func)
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``diffaug eval``; returns the exit status (2 for a config error)."""
    args = parse_items_anywhere(build_parser(), argv)
    # Progress of long evaluations (each benchmark candidate, feature extraction) goes to the log.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files, overrides = split_items(args.items)
    try:
        cfg = load_config(files, overrides)
        set_progress(bool(cfg.logging.progress_bar))
        return args.func(cfg, args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"diffaug eval: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(eval_main())
