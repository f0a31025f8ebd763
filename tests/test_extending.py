"""A new noise process, sampler and network are one definition each (tests/toy_components.py), registered
through the public registries: nothing else in diffaug names them, yet a config selects them, training runs
and sampling draws through them.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import ExitStack

import pytest
import torch
from PIL import Image

from diffaug.build import build_objective
from diffaug.cli import main as diffaug_main
from diffaug.config import ConfigError, load_config
from diffaug.diffusion import PROCESSES, SAMPLERS
from diffaug.nets import NETS, DenoiserNet
from diffaug.training import train
from tests.training_helpers import one_torch_thread  # noqa: F401

TOYS = "tests.toy_components"


@pytest.fixture(scope="module")
def toys():
    """The toy module, imported (which registers its components) for this file's tests only."""
    with ExitStack() as stack:
        for registry in (PROCESSES, SAMPLERS, NETS):
            stack.enter_context(registry.temporary())
        yield importlib.import_module(TOYS)
        sys.modules.pop(TOYS, None)


# ---------------------------------------------------------------- using them by name


def toy_config(run_dir, *overrides: str):
    return load_config([], [
        f"run_dir={run_dir}",
        "data.resolution=8",
        "data.batch_size=8",
        "data.max_items=32",
        "model.net=toy-convnet",
        "model.args={width: 4}",
        "objective.process=toy-cosine",
        "objective.args={min_snr_gamma: 2.0}",
        "sampling.sampler=toy-ddim",
        "sampling.steps=3",
        "sampling.batch_size=4",
        "sampling.microbatch=4",
        "training.max_steps=2",
        "training.warmup_steps=1",
        "training.accelerator=cpu",
        "training.devices=1",
        "logging.logger=none",
        "logging.progress_bar=false",
        *overrides,
    ])


def test_registered_names_are_valid_config_values_with_the_usual_error(toys):
    with pytest.raises(ConfigError) as err:
        load_config([], ["objective.process=toy-cosin"])
    assert "'objective.process'" in str(err.value) and "Did you mean 'toy-cosine'?" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'toy-ddim'"):
        load_config([], ["sampling.sampler=toy-ddin"])
    with pytest.raises(ConfigError, match="Did you mean 'toy-convnet'"):
        load_config([], ["model.net=toy-convnt"])


def test_the_process_brings_its_weighting_and_the_config_its_options(toys, tmp_path):
    objective = build_objective(toy_config(tmp_path))
    assert isinstance(objective.process, toys.CosineProcess)
    assert objective.weighting == "min_snr" and objective.min_snr_gamma == 2.0
    with pytest.raises(ConfigError, match="objective.args.*min_snr_gamma"):
        toy_config(tmp_path, "objective.args={min_snr_gama: 2.0}")


def test_toy_components_train_and_sample_by_name(toys, tmp_path):
    net = NETS.get("toy-convnet")(in_channels=1, resolution=8, num_classes=10)
    assert isinstance(net, DenoiserNet)

    result = train(toy_config(tmp_path / "run"))
    assert result.final_step == 2 and result.weights is not None and result.weights.is_file()

    toys.SAMPLER_GRIDS.clear()
    toys.ToyConvNet.noise_levels_seen.clear()
    out = tmp_path / "grid.png"
    assert diffaug_main(["sample", str(result.weights), "--out", str(out), "--per-class", "1"]) == 0
    with Image.open(out) as grid:
        width, height = grid.size
    assert width >= 8 and height >= 10 * 8  # one 8x8 row per digit class

    # The toy sampler drew every image, on the toy process's 3-step grid from t_max to t_min ...
    assert toys.SAMPLER_GRIDS
    process = toys.CosineProcess()
    for grid in toys.SAMPLER_GRIDS:
        assert torch.allclose(grid, process.timesteps(3))
    # ... and the toy network saw the toy process's noise levels 1000 t at exactly those times.
    seen = {round(float(level), 6) for levels in toys.ToyConvNet.noise_levels_seen for level in levels}
    assert seen == {round(float(1000.0 * t), 6) for t in process.timesteps(3)}


def test_the_registrations_end_with_this_module(toys):
    assert "toy-cosine" in PROCESSES and "toy-ddim" in SAMPLERS and "toy-convnet" in NETS
    with PROCESSES.temporary():
        PROCESSES.add("toy-other", toys.CosineProcess)
        assert "toy-other" in PROCESSES
    assert "toy-other" not in PROCESSES and "toy-cosine" in PROCESSES
