"""Measurements side by side: every candidate of a row is timed in turn within each repeat (ours, then the
reference, then ours with gradient checkpointing, ...), warm-up excluded, and the median repeat is reported,
so that ratios hold on a shared, noisy machine."""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.device import bf16_peak, count_flops, synchronize, transient_peak_bytes
from benchmarks.sampling import SamplerSpec, our_sampler, reference_sampler
from benchmarks.suite import PARAM_TOLERANCE, BenchConfig
from benchmarks.training import Candidate, build_candidate

log = logging.getLogger(__name__)


@dataclass
class Settings:
    repeats: int = 5
    warmup: int = 2  # steps per candidate before timing (more under torch.compile)
    repeat_seconds: float = 0.5  # steps per repeat are chosen so that the slowest candidate takes this long
    max_steps_per_repeat: int = 50
    grad_checkpointing: bool = True  # also time and measure ours with gradient checkpointing
    sample_batch: int = 16
    sample_repeats: int = 2
    ddpm_steps: int = 1000


def time_interleaved(runs: dict[str, Callable[[int], None]], *, repeats: int, steps: int,
                     device: torch.device, first_step: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each run, one list entry per repeat; runs alternate within every repeat."""
    times: dict[str, list[float]] = {label: [] for label in runs}
    i = first_step
    for _ in range(repeats):
        for label, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                run(i)
                i += 1
            synchronize(device)
            times[label].append((time.perf_counter() - start) / steps)
    return times


def _summary(seconds: list[float], images: int) -> dict:
    median = statistics.median(seconds)
    return {"seconds_median": median, "seconds_all": seconds, "images_per_s": images / median}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ training


def training_row(config: BenchConfig, device: torch.device, precision: str, compile: bool,
                 settings: Settings, *, channels_last: bool = False) -> dict:
    """Ours vs the reference (and ours with gradient checkpointing) at one precision / compile setting."""
    batch = config.batch_size(device.type)
    kinds = [("ours", False), ("ref", False)] + ([("ours", True)] if settings.grad_checkpointing else [])
    candidates: dict[str, Candidate] = {}
    memory: dict[str, int] = {}
    warm_seconds: dict[str, float] = {}
    for kind, ckpt in kinds:
        options = dict(compile=compile, grad_checkpointing=ckpt, batch_size=batch)
        if kind == "ours":
            options["channels_last"] = channels_last
        candidate = build_candidate(kind, config, device, precision, **options)
        warmup = settings.warmup + (2 if compile else 0)
        for i in range(warmup):
            start = time.perf_counter()
            candidate.step(i)
            synchronize(device)
            warm_seconds[candidate.label] = time.perf_counter() - start
        # After warm-up, so that compilation and lazy initialisation are not counted.
        transient = transient_peak_bytes(lambda c=candidate: [c.step(warmup + j) for j in range(2)], device)
        memory[candidate.label] = candidate.persistent_bytes() + transient
        candidates[candidate.label] = candidate

    slowest = max(warm_seconds.values())
    steps = max(1, min(settings.max_steps_per_repeat, math.ceil(settings.repeat_seconds / slowest)))
    runs = {label: c.step for label, c in candidates.items()}
    times = time_interleaved(runs, repeats=settings.repeats, steps=steps, device=device, first_step=100)

    ours, ref = candidates["ours"], candidates["ref"]
    params = {"ours": ours.num_parameters, "ref": ref.num_parameters}
    params["relative_difference"] = abs(params["ours"] - params["ref"]) / params["ref"]
    row = {
        "config": config.name, "image_shape": list(config.image_shape), "precision": precision,
        "compile": compile, "channels_last": channels_last, "batch_size": batch,
        "steps_per_repeat": steps, "repeats": settings.repeats, "parameters": params,
        "parameters_match": params["relative_difference"] <= PARAM_TOLERANCE,
    }
    for label in candidates:
        row[label] = {**_summary(times[label], batch), "peak_memory_bytes": memory[label]}
    row["ratio_images_per_s"] = row["ours"]["images_per_s"] / row["ref"]["images_per_s"]
    row["ratio_peak_memory"] = memory["ours"] / memory["ref"]
    if "ours+ckpt" in candidates:
        row["grad_checkpointing"] = {
            "memory_cut": 1 - memory["ours+ckpt"] / memory["ours"],
            "time_cost": row["ours+ckpt"]["seconds_median"] / row["ours"]["seconds_median"] - 1,
        }
    del candidates, ours, ref, runs
    _free(device)
    return row


def model_flops(config: BenchConfig, device: torch.device) -> dict[str, int]:
    """FLOPs of one training step (forward + backward) of ours and the reference, counted in eager fp32;
    the model's FLOPs, so they hold for every precision and for compiled runs."""
    flops = {}
    for kind in ("ours", "ref"):
        candidate = build_candidate(kind, config, device, "fp32", batch_size=config.batch_size(device.type))
        candidate.step(0)  # optimizer state allocated outside the count
        flops[kind] = count_flops(lambda c=candidate: c.step(1))
        del candidate
        _free(device)
    return flops


def add_utilisation(row: dict, flops: dict[str, int], device: torch.device,
                    measured_peaks: dict[str, float]) -> None:
    """Achieved FLOP/s and MFU two ways: against the data sheet's dense bf16 peak (GPUs in its table), and
    against the dense matmul peak measured in this run in the row's own precision."""
    peak = bf16_peak(device)
    measured = measured_peaks.get(row["precision"])
    for kind in ("ours", "ref"):
        achieved = flops[kind] / row[kind]["seconds_median"]
        row[kind]["flops_per_step"] = flops[kind]
        row[kind]["achieved_flops_per_s"] = achieved
        row[kind]["mfu"] = achieved / peak if peak else None
        row[kind]["mfu_measured"] = achieved / measured if measured else None


# ------------------------------------------------------------------------------------------ sampling


def sampling_rows(config: BenchConfig, device: torch.device, precision: str, settings: Settings,
                  specs: list[SamplerSpec]) -> tuple[list[dict], dict]:
    """Images/s of every sampler, ours vs the reference; and whether ours is byte-identical when the same
    images are made in one batch or in two."""
    batch = settings.sample_batch
    ours, our_net = our_sampler(config, device, precision, microbatch=batch)
    ref, ref_net = reference_sampler(config, device, precision)
    warm = SamplerSpec("warm-up", "ddim", 2)
    ours(warm, batch, 0)
    ref(warm, batch, 0)
    rows = []
    for spec in specs:
        runs = {"ours": lambda i, s=spec: ours(s, batch, 0), "ref": lambda i, s=spec: ref(s, batch, 0)}
        times = time_interleaved(runs, repeats=settings.sample_repeats, steps=1, device=device)
        row = {"config": config.name, "sampler": spec.name, "nfe": spec.steps, "batch_size": batch,
               "microbatch": batch, "precision": precision if device.type == "cuda" else "fp32",
               "parameters": {"ours": sum(p.numel() for p in our_net.parameters()),
                              "ref": sum(p.numel() for p in ref_net.parameters())},
               "ours": _summary(times["ours"], batch), "ref": _summary(times["ref"], batch)}
        row["ratio_images_per_s"] = row["ours"]["images_per_s"] / row["ref"]["images_per_s"]
        rows.append(row)
    # The export guarantee, checked on the run's own network: one batch == two half batches, byte for byte.
    spec = next(s for s in specs if s.ours == "ddim")
    whole = ours(spec, batch, 0)
    half = batch // 2
    parts = torch.cat([ours(spec, half, 0), ours(spec, batch - half, half)])
    identity = {"config": config.name, "sampler": spec.name, "batch_sizes": [batch, half, batch - half],
                "byte_identical": bool(torch.equal(whole, parts))}
    _free(device)
    return rows, identity
