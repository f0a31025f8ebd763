"""The device a run is measured on, its peak FLOP/s (the data sheet's bf16 figure, and a matmul measured in
the run), and the two measurements that depend on the device: peak memory and FLOPs."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, without 2:4 sparsity; matched
# against torch.cuda.get_device_name by substring, most specific first.
BF16_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
]

MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated over two training steps",
    "cpu": "peak of live PyTorch tensor bytes over two training steps, from the profiler's allocation "
           "events (the CPU analogue of CUDA max_memory_allocated; Python objects, allocator slack and "
           "library code pages are not counted)",
}


def datasheet_peak(name: str) -> float | None:
    """The data sheet's dense bf16 FLOP/s of the GPU ``name`` (torch.cuda.get_device_name), if known."""
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def bf16_peak(device: torch.device) -> float | None:
    return datasheet_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


MATMUL_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def measure_matmul_peak(device: torch.device, precision: str = "bf16", *, size: int | None = None,
                        seconds: float = 0.5) -> dict:
    """FLOP/s of a square dense matmul in ``precision``, the best of several timed runs: what this device
    actually sustains (clocks, power limit, the float32 matmul precision in force), beside the data sheet.
    Default size 8192 on CUDA (large enough for the tensor cores' peak), 512 on a CPU."""
    size = size or (8192 if device.type == "cuda" else 512)
    g = torch.Generator(device).manual_seed(0)
    dtype = MATMUL_DTYPES[precision]
    a, b = (torch.randn(size, size, generator=g, device=device).to(dtype) for _ in range(2))
    flops = 2 * size**3
    (a @ b).sum()  # kernels chosen and loaded outside the timing
    synchronize(device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    calls = max(1, min(200, round(seconds / 5 / max(time.perf_counter() - start, 1e-6))))
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return {"precision": precision, "size": size, "flops_per_s": flops / best,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            info = handle.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    name = model.group(1).strip() if model else "unknown CPU"
    family = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.MULTILINE)
    number = re.search(r"^model\s*:\s*(\d+)$", info, re.MULTILINE)
    if family and number:  # virtual machines often report a bare "AMD EPYC"
        name += f" (family {family.group(1)}, model {number.group(1)})"
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    if flags:
        name += " [" + " ".join(f for f in flags.group(1).split() if f in wanted) + "]"
    return name


def describe(device: torch.device) -> dict:
    info = {
        "type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["name"] = f"{info['cpu']}, {info['cpu_cores']} cores"
    info["bf16_peak_flops"] = bf16_peak(device)
    return info


def slug(info: dict) -> str:
    """A folder name for the device, e.g. ``cuda-nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc-2c``."""
    if info["type"] == "cuda":
        base = f"cuda-{info['name']}"
    else:
        base = f"cpu-{info['cpu'].split('(')[0].split('[')[0]}-{info['cpu_cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transient_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` above what was live when it started."""
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of ``fn`` as PyTorch's FlopCounterMode counts them (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
