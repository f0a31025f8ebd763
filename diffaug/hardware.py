"""What a training job gets from the machine it runs on: data-loading workers from the CPUs the job has, and
the CUDA math settings (TF32, cuDNN autotuning, deterministic algorithms) for the duration of a fit.

Both only matter on accelerators: a CPU-only run keeps loading in the training process and exact float32
math, so CPU runs (and the test suite) behave the same on every machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

MAX_AUTO_WORKERS = 8  # beyond this, decoding small images is no longer what limits a GPU


def uses_cuda(accelerator: str) -> bool:
    """Whether a Trainer with ``accelerator`` ("auto", "cpu", "gpu", "cuda", "mps") trains on CUDA."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def job_cpus() -> int:
    """CPUs this process may use: SLURM's allocation per task when set, else its CPU affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def processes_per_node(devices: Any, accelerator: str) -> int:
    """Training processes that share this node's CPUs, one per device: ``training.devices`` resolved."""
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (int, str)):  # "auto" or -1: every device of the node
        return max(1, torch.cuda.device_count()) if uses_cuda(accelerator) else 1
    return max(1, len(devices))  # a list of device ids


def auto_num_workers(*, accelerator: str, devices: Any = "auto") -> int:
    """``data.num_workers`` when the config leaves it null.

    0 on a CPU-only run: workers would take cores from the training threads, and the test suite stays as
    fast and deterministic as with the main process loading. On an accelerator, this process's share of the
    job's CPUs (SLURM_CPUS_PER_TASK is already per process) less one for the training loop, at most
    MAX_AUTO_WORKERS.
    """
    if not (uses_cuda(accelerator) or accelerator == "mps"):
        return 0
    cpus = job_cpus()
    if not os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus //= processes_per_node(devices, accelerator)
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


@contextmanager
def cuda_math(*, enabled: bool, tf32: bool, deterministic: bool) -> Iterator[None]:
    """CUDA math for a training run; on exit the previous settings are back, those Lightning's Trainer sets
    process-wide included (deterministic algorithms, cuDNN autotuning), so that an export later in the same
    process computes exactly as it would alone.

    tf32: float32 matmuls and convolutions on TF32 tensor cores (``set_float32_matmul_precision("high")``,
    10-bit mantissa, several times faster on A100/H100); False: exact float32. deterministic: cuDNN without
    autotuning and deterministic kernels only (Lightning's ``deterministic=True`` adds
    ``torch.use_deterministic_algorithms``), for resumes equal to the bit on a GPU; otherwise cuDNN autotunes
    its kernels for the fixed training shapes. ``enabled=False`` (CPU runs) sets nothing: "high" would let
    oneDNN use bf16 inside float32 matmuls on CPUs that have it.
    """
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    try:
        yield
    finally:
        precision, allow_tf32, benchmark, cudnn_deterministic, algorithms, warn_only = saved
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
