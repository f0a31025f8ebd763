"""The issue's targets checked against a run's results, and the Markdown report."""

from __future__ import annotations

TRAIN_RATIO_TARGET = 1.3
SAMPLE_RATIO_TARGET = 1.3
MFU_TARGET = 0.40  # DiT-B/2 training in bf16, of the bf16 matmul peak measured on the device (H100 / H200)
CKPT_MEMORY_CUT_TARGET = 0.25  # "substantially"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def evaluate_targets(results: dict) -> list[dict]:
    """One entry per target and measurement: what was measured and whether it meets the target."""
    device = results["device"]
    on_gpu = device["type"] == "cuda"
    targets = []
    speed_precision = "bf16" if on_gpu else "fp32"
    for row in results["training"]:
        name = f"{row['config']} {row['precision']}{' compiled' if row['compile'] else ''}"
        if row["precision"] == speed_precision:
            targets.append({"target": f"training img/s >= {TRAIN_RATIO_TARGET}x reference ({name})",
                            "measured": f"{row['ratio_images_per_s']:.2f}x",
                            "met": row["ratio_images_per_s"] >= TRAIN_RATIO_TARGET})
        targets.append({"target": f"peak training memory <= reference ({name})",
                        "measured": f"{row['ratio_peak_memory']:.2f}x",
                        "met": row["ratio_peak_memory"] <= 1.0})
        if "grad_checkpointing" in row:
            ckpt = row["grad_checkpointing"]
            targets.append({"target": f"gradient checkpointing cuts memory >= {CKPT_MEMORY_CUT_TARGET:.0%} "
                                      f"({name})",
                            "measured": f"{-ckpt['memory_cut']:+.0%} memory, {ckpt['time_cost']:+.0%} time",
                            "met": ckpt["memory_cut"] >= CKPT_MEMORY_CUT_TARGET})
        mfu, measured = row["ours"].get("mfu"), row["ours"].get("mfu_measured")
        if row["config"].startswith("dit-b-2") and row["precision"] == "bf16" and on_gpu:
            datasheet = "no data-sheet peak" if mfu is None else f"{mfu:.1%} of the data sheet's"
            targets.append({"target": f"DiT-B/2 training >= {MFU_TARGET:.0%} of the measured bf16 matmul "
                                      f"peak ({name})",
                            "measured": f"{measured:.1%} ({datasheet})",
                            "met": measured >= MFU_TARGET})
    for row in results["sampling"]:
        targets.append({"target": f"sampling img/s >= {SAMPLE_RATIO_TARGET}x reference "
                                  f"({row['config']} {row['sampler']})",
                        "measured": f"{row['ratio_images_per_s']:.2f}x",
                        "met": row["ratio_images_per_s"] >= SAMPLE_RATIO_TARGET})
    for check in results["sampling_identity"]:
        targets.append({"target": f"export byte-identical across batch sizes ({check['config']} "
                                  f"{check['sampler']}, batches {check['batch_sizes']})",
                        "measured": "identical" if check["byte_identical"] else "differs",
                        "met": check["byte_identical"]})
    fastest = {}
    for row in results["training"]:
        key = tuple(row["image_shape"])
        fastest[key] = max(fastest.get(key, 0.0), row["ours"]["images_per_s"])
    for loader in results["loader"]:
        key = (loader["channels"], loader["resolution"], loader["resolution"])
        if key in fastest:
            targets.append({"target": f"loader alone faster than training ({loader['source']}, "
                                      f"{loader['num_workers']} workers)",
                            "measured": f"{loader['images_per_s']:.0f} vs {fastest[key]:.0f} img/s",
                            "met": loader["images_per_s"] >= fastest[key]})
    return targets


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _peaks_line(device: dict) -> str:
    """The measured matmul peaks beside the data sheet's bf16 figure; MFU is judged against both."""
    peaks = device.get("measured_matmul_peak") or {}
    measured = ", ".join(f"{p} {v['flops_per_s'] / 1e12:.3g} TFLOP/s ({v['size']}^3 matmul, float32 matmul "
                         f"precision {v['float32_matmul_precision']})" for p, v in peaks.items())
    sheet = device.get("bf16_peak_flops")
    sheet = "not known" if sheet is None else f"{sheet / 1e12:.0f} TFLOP/s"
    return (f"Dense matmul peak measured in this run: {measured or 'not measured'}; data-sheet bf16 peak: "
            f"{sheet}. MFU measured: achieved FLOP/s over the measured peak of the row's precision.")


def markdown(results: dict) -> str:
    device, settings = results["device"], results["settings"]
    lines = [
        f"# diffaug benchmarks on {device['name']}",
        "",
        f"torch {device['torch']}, diffusers {device['diffusers']}, Python {device['python']}, "
        f"{device['torch_threads']} torch threads."
        + (f" CUDA {device['cuda']}, {device['gpu_memory_gib']} GiB; host CPU: {device['cpu']}, "
           f"{device['cpu_cores']} cores." if device["type"] == "cuda" else ""),
        f"Suite `{settings['suite']}`; medians of {settings['repeats']} interleaved repeats after warm-up. "
        f"Ours: {results['method']['ours']} Reference: {results['method']['ref']}",
        f"Peak memory: {results['method']['memory']}.",
        _peaks_line(device),
        "",
        "## Training",
        "",
        "| config | prec | compile | batch | params ours / ref | ours img/s | ref img/s | ratio "
        "| ours MiB | ref MiB | mem ratio | ckpt mem | ckpt time | ours TFLOP/s | MFU data sheet "
        "| MFU measured | ref MFU measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        ours, ckpt = r["ours"], r.get("grad_checkpointing")
        ckpt_memory = "-" if ckpt is None else f"{-ckpt['memory_cut']:+.0%}"
        ckpt_time = "-" if ckpt is None else f"{ckpt['time_cost']:+.0%}"
        achieved = ours.get("achieved_flops_per_s")
        tflops = "-" if achieved is None else f"{achieved / 1e12:.3f}"
        mfu, measured, ref_measured = (_percent(v) for v in (ours.get("mfu"), ours.get("mfu_measured"),
                                                               r["ref"].get("mfu_measured")))
        lines.append(
            f"| {r['config']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | {r['batch_size']} "
            f"| {r['parameters']['ours']:,} / {r['parameters']['ref']:,} "
            f"| {ours['images_per_s']:.1f} | {r['ref']['images_per_s']:.1f} | {r['ratio_images_per_s']:.2f} "
            f"| {_mib(ours['peak_memory_bytes'])} | {_mib(r['ref']['peak_memory_bytes'])} "
            f"| {r['ratio_peak_memory']:.2f} "
            f"| {ckpt_memory} | {ckpt_time} | {tflops} | {mfu} | {measured} | {ref_measured} |"
        )
    if results["sampling"]:
        lines += ["", "## Sampling", "",
                  "| config | sampler | NFE | batch | prec | ours img/s | ref img/s | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["sampling"]:
            lines.append(f"| {r['config']} | {r['sampler']} | {r['nfe']} | {r['batch_size']} "
                         f"| {r['precision']} "
                         f"| {r['ours']['images_per_s']:.2f} | {r['ref']['images_per_s']:.2f} "
                         f"| {r['ratio_images_per_s']:.2f} |")
        for check in results["sampling_identity"]:
            lines.append(f"\nOurs, {check['config']} {check['sampler']}: batch {check['batch_sizes'][0]} vs "
                         f"{check['batch_sizes'][1]} + {check['batch_sizes'][2]} -> "
                         f"{'byte-identical' if check['byte_identical'] else 'DIFFERENT'} uint8 images.")
    if results["loader"]:
        lines += ["", "## Data loader alone", "",
                  "| source | C x H x W | batch | workers | img/s | first batch s |",
                  "|---|---|---|---|---|---|"]
        for r in results["loader"]:
            lines.append(f"| {r['source']} | {r['channels']}x{r['resolution']}x{r['resolution']} "
                         f"| {r['batch_size']} | {r['num_workers']} | {r['images_per_s']:.0f} "
                         f"| {r['first_batch_s']:.2f} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    if results["skipped"]:
        lines += ["", "## Not measured in this run", ""]
        lines += [f"- {s['what']}: {s['why']}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"
