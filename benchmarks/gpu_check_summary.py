"""The Python side of benchmarks/gpu_check.sh: ``--install WHEELS --target DIR`` installs the packages the
machine lacks from wheels, ``--info FILE`` writes the versions and the measured matmul peaks, and ``--work DIR
--out DIR`` (after every step) gathers what the steps left into summary.md and summary.json.

The summary imports no torch, so that rewriting it after every step costs little of the script's budget.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import markdown

PACKAGES = ("torch", "lightning", "timm", "diffusers", "omegaconf", "webdataset", "braceexpand",
            "torchmetrics", "numpy", "triton", "wandb")
BENCHMARKS = ("bench-eager", "bench-compiled")
# Not on the bare GPU machine; wandb neither, but the check logs to CSV.
CARRIED = ("diffusers", "omegaconf", "webdataset", "braceexpand")


# ------------------------------------------------------------------------------------------ --install


def install_wheels(wheels: Path, target: Path) -> int:
    """pip install (no index, no dependencies) the wheels in ``wheels`` into ``target`` when any of CARRIED
    is missing; the script puts ``target`` on PYTHONPATH."""
    missing = [name for name in CARRIED if importlib.util.find_spec(name) is None]
    if not missing:
        print(f"{', '.join(CARRIED)}: installed already")
        return 0
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        print(f"missing {', '.join(missing)} and no wheels in {wheels}: fill it with the pip download "
              "line in benchmarks/gpu_check.sh's header")
        return 1
    rc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                         "--no-compile", "--no-cache-dir", "--target", str(target), *files]).returncode
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    still = [name for name in missing if importlib.util.find_spec(name) is None]
    print(f"installed {len(files)} wheels into {target}" + (f"; still missing {still}" if still else ""))
    return rc or int(bool(still))


# ------------------------------------------------------------------------------------------ --info


def collect_info(device_name: str, dry_run: bool) -> dict:
    """Versions, the device, and its dense matmul peaks: bf16, and float32 under the math training uses
    (TF32 on CUDA unless training.tf32=false)."""
    import torch

    from benchmarks.device import describe, measure_matmul_peak
    from diffaug.hardware import cuda_math

    device = torch.device(device_name)
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    size = 128 if dry_run else None
    with cuda_math(enabled=device.type == "cuda", tf32=True, deterministic=False):
        peaks = {p: measure_matmul_peak(device, p, size=size) for p in ("bf16", "fp32")}
    return {"device": describe(device), "versions": versions, "measured_matmul_peak": peaks}


# ------------------------------------------------------------------------------------------ --work


def _steps(work: Path) -> list[dict]:
    path = work / "steps.tsv"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, status, seconds, limit, command = (line.split("\t") + [""] * 5)[:5]
        rows.append({"step": name, "status": status, "seconds": int(seconds or 0), "limit": int(limit or 0),
                     "command": command})
    return rows


def _tests(work: Path) -> str | None:
    """pytest's closing line ("9 passed in 80.1s"), or the last failure lines."""
    path = work / "tests.log"
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    closing = [line for line in lines if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    return closing[-1].strip("= ") if closing else None


def _final_step(log: Path) -> int | None:
    """The step train.py says it ended at (its "final step:    300" line)."""
    found = re.findall(r"final step:\s*(\d+)", log.read_text(errors="replace")) if log.is_file() else []
    return int(found[-1]) if found else None


def _train(work: Path) -> dict | None:
    run_dir = work / "train"
    metrics = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    if not metrics:
        return None
    rows = list(csv.DictReader(metrics[-1].open()))

    def values(key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]

    losses, rates = values("train/loss"), values("train/images_per_sec")
    late = [v for step, v in rates if step >= max(s for s, _ in rates) / 3] if rates else []
    return {
        "metrics_csv": str(metrics[-1]),
        "final_step": _final_step(work / "train.log"),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        # After the first third of the run: compilation and warm-up excluded.
        "images_per_s_median": statistics.median(late) if late else None,
        "weights_written": (run_dir / "model.safetensors").is_file(),
        "sample_grids": len(list((run_dir / "samples").glob("*.png"))),
    }


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _fmt(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _tflops(flops: float | None) -> str:
    return "not known" if flops is None else f"{flops / 1e12:.0f} TFLOP/s"


def summarise(work: Path, out: Path, dry_run: bool) -> dict:
    info = json.loads((work / "info.json").read_text()) if (work / "info.json").is_file() else {}
    summary = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry_run, "info": info,
               "steps": _steps(work), "tests": _tests(work), "train": _train(work), "benchmarks": {}}
    for name in BENCHMARKS:
        results = work / name / "results.json"
        if results.is_file():
            shutil.copyfile(results, out / f"{name}.json")
            summary["benchmarks"][name] = json.loads(results.read_text())
    if summary["train"]:
        shutil.copyfile(summary["train"]["metrics_csv"], out / "train-metrics.csv")

    device = info.get("device", {})
    title = f"# gpu_check on {device.get('name', 'an unknown device')}"
    lines = [title + (" (DRY RUN on the CPU)" if dry_run else ""), "",
             f"Written {summary['written']} by `benchmarks/gpu_check.sh`; every step has its own time "
             "limit.", ""]
    if info:
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v is not None)
        missing = ", ".join(k for k, v in info["versions"].items() if v is None)
        lines += [f"Versions: {versions}" + (f"; not installed: {missing}" if missing else "") + ".", ""]
        lines += ["Measured dense matmul peak (best of 5 timed runs): " + ", ".join(
            f"{p} {v['flops_per_s'] / 1e12:.3g} TFLOP/s ({v['size']}^3, float32 matmul precision "
            f"{v['float32_matmul_precision']})" for p, v in info["measured_matmul_peak"].items())
            + f"; data-sheet bf16 peak: {_tflops(device.get('bf16_peak_flops'))}.", ""]
    lines += ["## Steps", "", "| step | status | seconds | limit | command |", "|---|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['limit']} | `{s['command']}` |"
              for s in summary["steps"]]
    if summary["tests"]:
        lines += ["", f"Device-aware tests (`pytest -m device`): {summary['tests']}."]
    train = summary["train"]
    if train:
        lines += ["", "## train.py, bf16-mixed" + ("" if dry_run else " with torch.compile"), "",
                  f"Reached step {train['final_step']}; train/loss {_fmt(train['first_loss'], '.4f')} -> "
                  f"{_fmt(train['last_loss'], '.4f')}; {_fmt(train['images_per_s_median'])} images/s (median "
                  f"after the first third); model.safetensors "
                  f"{'written' if train['weights_written'] else 'MISSING'}; "
                  f"{train['sample_grids']} sample grid(s)."]
    for name, results in summary["benchmarks"].items():
        report = re.sub(r"^#", "###", markdown(results), flags=re.MULTILINE)
        lines += ["", f"## {name}", "", report]
    _write(out / "summary.md", "\n".join(lines) + "\n")
    _write(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check_summary", description=__doc__)
    p.add_argument("--install", type=Path, help="folder of wheels to install missing packages from")
    p.add_argument("--target", type=Path, help="with --install: where they go")
    p.add_argument("--info", type=Path, help="write versions and matmul peaks to this JSON file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, help="the script's work folder")
    p.add_argument("--out", type=Path, help="where summary.md and summary.json go")
    p.add_argument("--dry-run", type=int, default=0)
    args = p.parse_args(argv)
    if args.install:
        return install_wheels(args.install, args.target)
    if args.info:
        info = collect_info(args.device, bool(args.dry_run))
        args.info.write_text(json.dumps(info, indent=1) + "\n")
        print(json.dumps({"versions": info["versions"], "measured_matmul_peak": info["measured_matmul_peak"]},
                         indent=1))
    if args.work:
        summarise(args.work, args.out, bool(args.dry_run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
