"""python -m benchmarks: diffaug against diffusers, training and sampling, on this machine's device.

Writes results.json and results.md to --out (default benchmarks/results/<device-slug>/) after every
measurement, so a run stopped by a time limit keeps what it measured, and prints the table at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("benchmarks")

METHOD = {
    "ours": "diffaug's DiffusionModule step without the Lightning loop (denoising_loss through the Denoiser "
            "and Objective, non-finite check, backward, grad clip 1.0, configure_optimizers' AdamW and "
            "schedule, EMA update); sampling through generate_images, the export path.",
    "ref": "diffusers' unconditional-training recipe (DDPMScheduler.add_noise, MSE, torch AdamW, grad clip "
           "1.0, EMAModel foreach) on UNet2DModel / DiTTransformer2DModel of equal size; sampling with "
           "DDPMPipeline / DDIMPipeline / DPMSolverMultistepScheduler (a DiT runs the same scheduler loop).",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["auto", "cpu", "gpu", "full"], default="auto",
                   help="auto: gpu on a CUDA device, else cpu (the tiny configs); full: every config")
    p.add_argument("--configs", help="comma-separated config names (overrides --suite)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile", choices=["auto", "off", "on", "both"], default="auto",
                   help="torch.compile of both networks; auto: both on CUDA, off on CPU (slow to build)")
    p.add_argument("--channels-last", action="store_true", help="our UNets in channels-last layout")
    p.add_argument("--no-grad-checkpointing", action="store_true", help="skip the gradient-checkpointing run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat-seconds", type=float, default=None, help="default 0.5 (CPU) / 1.0 (CUDA)")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--sample-batch", type=int, default=None, help="default 16 (CPU) / 256 (CUDA)")
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--ddpm-steps", type=int, default=None,
                   help="NFE of the DDPM row; default 1000 (CUDA) / 100 (CPU); the NFE used is recorded")
    p.add_argument("--samplers", default="ddpm,ddim,dpmpp_2m", help="comma-separated: ddpm, ddim, dpmpp_2m")
    p.add_argument("--no-tf32", action="store_true",
                   help="exact float32 on CUDA (training's default is TF32, training.tf32; both sides alike)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the peak matmul; default 8192 (CUDA) / 512 (CPU)")
    p.add_argument("--no-loader", action="store_true")
    p.add_argument("--loader-workers", type=int, default=None, help="default 0 (CPU) / 8 (CUDA)")
    p.add_argument("--loader-batches", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace, save: Callable[[dict], None] = lambda results: None) -> dict:
    """Every measurement of the run; ``save(results)`` after each one (and at the end)."""
    from benchmarks import device as dev
    from benchmarks.harness import Settings, add_utilisation, model_flops, sampling_rows, training_row
    from benchmarks.loader import measure_loaders
    from benchmarks.report import evaluate_targets
    from benchmarks.sampling import sampler_specs
    from benchmarks.suite import CONFIGS, SUITES
    from diffaug.hardware import cuda_math

    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    cuda = device.type == "cuda"
    suite = args.suite if args.suite != "auto" else ("gpu" if cuda else "cpu")
    names = args.configs.split(",") if args.configs else SUITES[suite]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    configs = [CONFIGS[n] for n in names]
    precisions = args.precisions.split(",")
    compile_modes = {"auto": [False, True] if cuda else [False], "off": [False], "on": [True],
                     "both": [False, True]}[args.compile]
    settings = Settings(
        repeats=args.repeats, warmup=args.warmup,
        repeat_seconds=args.repeat_seconds or (1.0 if cuda else 0.5),
        grad_checkpointing=not args.no_grad_checkpointing,
        sample_batch=args.sample_batch or (256 if cuda else 16), sample_repeats=args.sample_repeats,
        ddpm_steps=args.ddpm_steps or (1000 if cuda else 100),
    )
    samplers = args.samplers.split(",")
    specs = [s for s in sampler_specs(settings.ddpm_steps) if s.ours in samplers]
    if len(specs) != len(samplers):
        raise SystemExit(f"unknown sampler(s) in {samplers}; choose from ddpm, ddim, dpmpp_2m")
    # The CUDA math train() runs under by default (TF32 unless training.tf32=false), for both sides alike.
    with cuda_math(enabled=cuda, tf32=not args.no_tf32, deterministic=False):
        info = dev.describe(device)
        # The device's own dense matmul peak in each precision of the run, measured before anything else.
        peaks = {p: dev.measure_matmul_peak(device, p, size=args.matmul_size) for p in precisions}
        info["measured_matmul_peak"] = peaks
        log.info("measured matmul peak: %s", ", ".join(f"{p} {v['flops_per_s'] / 1e12:.3g} TFLOP/s"
                                                        for p, v in peaks.items()))
        results: dict = {
            "device": info,
            "settings": {"suite": suite, "configs": names, "precisions": precisions,
                         "compile": compile_modes, "channels_last": args.channels_last,
                         "tf32": cuda and not args.no_tf32, "samplers": [s.name for s in specs],
                         **vars(settings)},
            "method": {**METHOD, "memory": dev.MEMORY_METHODS[device.type]},
            "training": [], "sampling": [], "sampling_identity": [], "loader": [], "skipped": [],
        }
        skipped = results["skipped"]

        def checkpoint() -> None:
            results["targets"] = evaluate_targets(results)
            save(results)

        if not cuda:
            skipped.append({"what": "MFU against a data sheet",
                            "why": "no data-sheet peak for a CPU; MFU against the measured matmul peak"})
            if args.compile == "auto":
                skipped.append({"what": "torch.compile", "why": "off by default on CPU (minutes to build per "
                                                                "network); pass --compile both"})
        checkpoint()

        for config in configs:
            flops = model_flops(config, device)
            for precision in precisions:
                for compiled in compile_modes:
                    started = time.perf_counter()
                    row = training_row(config, device, precision, compiled, settings,
                                       channels_last=args.channels_last)
                    add_utilisation(row, flops, device, {p: v["flops_per_s"] for p, v in peaks.items()})
                    results["training"].append(row)
                    checkpoint()
                    log.info("training %s %s compile=%s: ours %.1f img/s, ref %.1f img/s (%.2fx) in %.0f s",
                             config.name, precision, compiled, row["ours"]["images_per_s"],
                             row["ref"]["images_per_s"], row["ratio_images_per_s"],
                             time.perf_counter() - started)
            if args.no_sampling:
                continue
            if not (cuda or config.tiny):
                skipped.append({"what": f"sampling {config.name}",
                                "why": "hours on a CPU at the issue's NFE; sampled on CUDA or in tiny "
                                       "configs"})
                continue
            started = time.perf_counter()
            sample_precision = "bf16" if cuda and "bf16" in precisions else "fp32"
            rows, identity = sampling_rows(config, device, sample_precision, settings, specs)
            results["sampling"] += rows
            results["sampling_identity"].append(identity)
            checkpoint()
            log.info("sampling %s in %.0f s", config.name, time.perf_counter() - started)
        if args.no_sampling:
            skipped.append({"what": "sampling", "why": "--no-sampling"})

        if args.no_loader:
            skipped.append({"what": "data loader", "why": "--no-loader"})
        else:
            shape = (3, 32) if any(c.channels == 3 for c in configs) else (1, 16)
            batch = max(c.batch_size(device.type) for c in configs)
            workers = args.loader_workers if args.loader_workers is not None else (8 if cuda else 0)
            results["loader"] = measure_loaders(channels=shape[0], resolution=shape[1], batch_size=batch,
                                                num_workers=workers, batches=args.loader_batches)
        checkpoint()
        return results


def main(argv: list[str] | None = None) -> int:
    from benchmarks.device import slug
    from benchmarks.report import markdown
    from diffaug.augset.files import atomic_write_bytes

    args = parse_args(argv)
    written: dict[str, str] = {}

    def save(results: dict) -> None:
        out = args.out or Path(__file__).parent / "results" / slug(results["device"])
        # Atomic writes: a run killed mid-write leaves the previous complete file.
        atomic_write_bytes(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
        atomic_write_bytes(out / "results.md", markdown(results).encode())
        written.update(json=str(out / "results.json"), md=str(out / "results.md"))

    results = run(args, save)
    print(markdown(results))
    print(f"results: {written['json']}, {written['md']}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    raise SystemExit(main())
