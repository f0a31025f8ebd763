"""The benchmark harness (python -m benchmarks) on its tiniest config, and the size match of its pairs."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("diffusers")

from benchmarks.__main__ import main, parse_args  # noqa: E402
from benchmarks.__main__ import run as run_benchmarks  # noqa: E402
from benchmarks.device import datasheet_peak, measure_matmul_peak  # noqa: E402
from benchmarks.suite import (  # noqa: E402
    CONFIGS,
    PARAM_TOLERANCE,
    build_ours,
    build_reference,
    count_parameters,
)

# Ours and the diffusers reference of every config; the UNet-tiny pair differs by 128 parameters.
EXPECTED_PARAMETERS = {
    "unet-tiny-16": (755_009, 754_881),
    "dit-tiny-16": (179_588, 179_588),
    "unet-cifar10-32": (35_746_307, 35_746_307),  # Ho et al.'s CIFAR-10 UNet, 35.7M
    "dit-s-2-latent32": (32_478_736, 32_478_736),
    "dit-b-2-latent32": (129_543_184, 129_543_184),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        main(["--device", "cpu", "--configs", "dit-tiny-16", "--precisions", "fp32", "--repeats", "2",
              "--warmup", "1", "--repeat-seconds", "0.01", "--sample-batch", "4", "--sample-repeats", "1",
              "--ddpm-steps", "4",
              "--loader-batches", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_results_have_every_section_and_key(run):
    results, _ = run
    for key in ("device", "settings", "method", "training", "sampling", "sampling_identity", "loader",
                "targets", "skipped"):
        assert key in results
    (row,) = results["training"]
    for key in ("config", "precision", "compile", "batch_size", "parameters", "parameters_match", "ours",
                "ref", "ours+ckpt", "ratio_images_per_s", "ratio_peak_memory", "grad_checkpointing"):
        assert key in row
    for label in ("ours", "ref"):
        for key in ("images_per_s", "seconds_median", "seconds_all", "peak_memory_bytes", "flops_per_step",
                    "achieved_flops_per_s", "mfu"):
            assert key in row[label]
        assert len(row[label]["seconds_all"]) == 2
    assert [r["sampler"] for r in results["sampling"]] == ["ddpm-4", "ddim-50", "dpmpp_2m-20"]
    assert [r["nfe"] for r in results["sampling"]] == [4, 50, 20]
    assert {r["source"] for r in results["loader"]} == {"sklearn_digits", "shards"}
    assert results["device"]["type"] == "cpu"
    assert any(s["what"] == "torch.compile" for s in results["skipped"])  # off on CPU, and said so


def test_measurements_are_real_numbers(run):
    results, _ = run
    (row,) = results["training"]
    rates = [row[label]["images_per_s"] for label in ("ours", "ref", "ours+ckpt")]
    rates += [r[label]["images_per_s"] for r in results["sampling"] for label in ("ours", "ref")]
    rates += [r["images_per_s"] for r in results["loader"]]
    assert all(math.isfinite(r) and r > 0 for r in rates)
    for label in ("ours", "ref", "ours+ckpt"):
        # At least the weights, EMA and AdamW moments: four copies of the parameters in fp32.
        assert row[label]["peak_memory_bytes"] > 4 * 4 * row["parameters"]["ours"]
    assert row["ours"]["flops_per_step"] > 0 and row["ours"]["mfu"] is None  # no data sheet for a CPU
    # Against the matmul peak measured in the same run, same precision and thread count: a real fraction.
    peak = results["device"]["measured_matmul_peak"]["fp32"]
    assert peak["flops_per_s"] > 1e9 and peak["size"] == 512
    assert 0.001 < row["ours"]["mfu_measured"] < 1.0 and 0.001 < row["ref"]["mfu_measured"] < 1.0
    achieved = row["ours"]["achieved_flops_per_s"]
    assert row["ours"]["mfu_measured"] == pytest.approx(achieved / peak["flops_per_s"])
    assert row["grad_checkpointing"]["memory_cut"] > 0  # recomputation keeps fewer activations
    assert results["sampling_identity"][0]["byte_identical"]


def test_parameter_counts_agree_within_the_stated_tolerance(run):
    results, _ = run
    (row,) = results["training"]
    assert row["parameters"]["ours"] == EXPECTED_PARAMETERS["dit-tiny-16"][0]
    assert row["parameters"]["ref"] == EXPECTED_PARAMETERS["dit-tiny-16"][1]
    assert row["parameters"]["relative_difference"] <= PARAM_TOLERANCE and row["parameters_match"]


def test_markdown_names_the_device_and_shows_the_rows(run):
    results, table = run
    assert results["device"]["cpu"] in table and f"{results['device']['cpu_cores']} cores" in table
    assert f"torch {torch.__version__}" in table
    assert "| dit-tiny-16 | fp32 | no | 64 | 179,588 / 179,588 |" in table
    assert "| dit-tiny-16 | dpmpp_2m-20 | 20 | 4 |" in table
    assert "Dense matmul peak measured in this run: fp32" in table and "MFU measured" in table
    assert "CUDA graphs" not in table


def test_results_are_saved_after_every_measurement():
    threads = torch.get_num_threads()
    snapshots = []
    try:
        run_benchmarks(parse_args(["--device", "cpu", "--configs", "dit-tiny-16,unet-tiny-16", "--precisions",
                                   "fp32", "--repeats", "1", "--warmup", "1", "--repeat-seconds", "0.01",
                                   "--no-sampling", "--no-loader", "--no-grad-checkpointing", "--threads",
                                   "1"]),
                       save=lambda results: snapshots.append(json.loads(json.dumps(results))))
    finally:
        torch.set_num_threads(threads)
    # Before the first row, after each of the two rows, at the end: a time limit keeps what was measured.
    assert [[r["config"] for r in s["training"]] for s in snapshots] == [
        [], ["dit-tiny-16"], ["dit-tiny-16", "unet-tiny-16"], ["dit-tiny-16", "unet-tiny-16"]]
    assert all("targets" in s and "measured_matmul_peak" in s["device"] for s in snapshots)


def test_the_data_sheet_knows_the_hopper_gpus_and_the_matmul_peak_is_measured():
    assert datasheet_peak("NVIDIA H200") == datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_peak("NVIDIA H100 PCIe") == 756e12 and datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("Tesla T4") is None
    peak = measure_matmul_peak(torch.device("cpu"), "fp32", size=128, seconds=0.05)
    assert peak["precision"] == "fp32" and peak["size"] == 128 and 1e8 < peak["flops_per_s"] < 1e13


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_and_ours_have_the_claimed_sizes(name):
    config = CONFIGS[name]
    with torch.device("meta"):  # shapes only: DiT-B/2 is 130M parameters
        ours, reference = build_ours(config), build_reference(config)
    assert (count_parameters(ours), count_parameters(reference)) == EXPECTED_PARAMETERS[name]
    n_ours, n_ref = count_parameters(ours), count_parameters(reference)
    assert abs(n_ours - n_ref) <= PARAM_TOLERANCE * n_ref
