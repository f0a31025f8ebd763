"""Loader workers from the CPUs a job has, and CUDA math settings that last only as long as a fit."""

from __future__ import annotations

import pytest
import torch

from diffaug.build import build_datamodule
from diffaug.config import load_config
from diffaug.hardware import auto_num_workers, cuda_math, processes_per_node, uses_cuda


@pytest.fixture
def sixteen_cpus(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)


def test_cpu_runs_load_in_the_training_process(sixteen_cpus):
    assert auto_num_workers(accelerator="cpu", devices=1) == 0
    assert not uses_cuda("cpu") and uses_cuda("gpu") and uses_cuda("cuda")


def test_gpu_runs_take_their_share_of_the_job_cpus(sixteen_cpus, monkeypatch):
    assert auto_num_workers(accelerator="gpu", devices=4) == 3  # 16 CPUs over 4 ranks, one for the loop
    assert auto_num_workers(accelerator="gpu", devices=1) == 8  # capped
    assert auto_num_workers(accelerator="gpu", devices=[0, 1, 2, 3, 4, 5, 6, 7]) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # already per rank: not divided again
    assert auto_num_workers(accelerator="gpu", devices=4) == 5
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert auto_num_workers(accelerator="gpu", devices=1) == 0
    assert processes_per_node("3", "gpu") == 3 and processes_per_node("auto", "cpu") == 1


def test_the_config_default_is_resolved_when_the_data_module_is_built(sixteen_cpus, monkeypatch):
    def workers(*overrides: str) -> int:
        return build_datamodule(load_config([], list(overrides))).num_workers

    assert load_config([], []).data.num_workers is None
    assert workers("training.accelerator=cpu") == 0
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")  # what the rendered sbatch scripts ask for
    assert workers("training.accelerator=gpu", "training.devices=1") == 7
    assert workers("training.accelerator=gpu", "data.num_workers=2") == 2


def test_cuda_math_is_set_for_the_fit_and_put_back_after():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
              torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with cuda_math(enabled=True, tf32=True, deterministic=False):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
    with pytest.raises(KeyboardInterrupt), cuda_math(enabled=True, tf32=False, deterministic=True):
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        torch.use_deterministic_algorithms(True)  # what Lightning's Trainer(deterministic=True) does
        raise KeyboardInterrupt
    after = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    assert after == before
    with cuda_math(enabled=False, tf32=True, deterministic=False):  # a CPU run: exact float32 matmuls
        assert torch.get_float32_matmul_precision() == before[0]
