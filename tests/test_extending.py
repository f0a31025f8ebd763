"""A new noise process, sampler and network are one definition each, registered through the public
registries: nothing else in diffaug names them, yet a config selects them, training runs and sampling
draws through them.

Everything below is what a newcomer's own file would hold.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from diffaug.build import build_objective
from diffaug.cli import main as diffaug_main
from diffaug.config import ConfigError, load_config
from diffaug.diffusion import PROCESSES, GaussianProcess, register_sampler
from diffaug.nets import NETS, DenoiserNet
from diffaug.training import train
from tests.training_helpers import one_torch_thread  # noqa: F401


# ---------------------------------------------------------------- a new noise process


@PROCESSES.register("toy-cosine")
class CosineProcess(GaussianProcess):
    """Continuous variance preserving process with alpha = cos(pi t / 2), sigma = sin(pi t / 2); its SDE:
    f = d log(alpha)/dt = -(pi / 2) tan(pi t / 2) and g^2 = d(sigma^2)/dt - 2 f sigma^2 = pi tan(pi t / 2)."""

    name = "toy-cosine"
    discrete = False
    default_weighting = "min_snr"

    def __init__(self, *, t_min: float = 1e-3, t_max: float = 0.999):
        super().__init__(t_min=t_min, t_max=t_max)

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)

    def _sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        tan = torch.tan(0.5 * math.pi * t)
        return -0.5 * math.pi * tan, (math.pi * tan).sqrt()

    def noise_level(self, t: Tensor) -> Tensor:
        return 1000.0 * t


# ---------------------------------------------------------------- a new sampler

SAMPLER_GRIDS: list[Tensor] = []  # the grid of every call, to check that sampling went through it


@register_sampler("toy-ddim")
def toy_ddim(denoise, process, grid, x, rng):
    """Deterministic DDIM: x_s = alpha_s x0_hat + sigma_s eps_hat."""
    SAMPLER_GRIDS.append(grid.clone())
    for t, s in zip(grid[:-1], grid[1:]):
        x0 = denoise(x, t)
        alpha_t, sigma_t = process.alpha_sigma(t)
        alpha_s, sigma_s = process.alpha_sigma(s)
        x = alpha_s * x0 + sigma_s * (x - alpha_t * x0) / sigma_t
    return denoise(x, grid[-1])


# ---------------------------------------------------------------- a new network


@NETS.register("toy-convnet")
class ToyConvNet(nn.Module):
    """Two convolutions around a noise-level and class embedding: the whole DenoiserNet contract."""

    class_table = "classes.weight"
    lora_targets = (r"^level$",)
    noise_levels_seen: list[Tensor] = []

    def __init__(self, *, in_channels: int, resolution: int, num_classes: int | None = None,
                 attn_backend: str = "sdpa", grad_checkpointing: bool = False, width: int = 8):
        super().__init__()
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes or 0
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.level = nn.Linear(2, width)
        self.classes = nn.Embedding(self.num_classes + 1, width) if self.num_classes else None
        self.conv_out = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        ToyConvNet.noise_levels_seen.append(noise_level.detach().clone())
        phase = noise_level[:, None] / 1000 * math.pi  # (N, 1)
        emb = self.level(torch.cat([phase.sin(), phase.cos()], 1))  # (N, W)
        if self.classes is not None:
            emb = emb + self.classes(class_labels)
        return self.conv_out(torch.relu(self.conv_in(x) + emb[:, :, None, None]))


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


def test_registered_names_are_valid_config_values_with_the_usual_error():
    with pytest.raises(ConfigError) as err:
        load_config([], ["objective.process=toy-cosin"])
    assert "'objective.process'" in str(err.value) and "Did you mean 'toy-cosine'?" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'toy-ddim'"):
        load_config([], ["sampling.sampler=toy-ddin"])
    with pytest.raises(ConfigError, match="Did you mean 'toy-convnet'"):
        load_config([], ["model.net=toy-convnt"])


def test_the_process_brings_its_weighting_and_the_config_its_options(tmp_path):
    objective = build_objective(toy_config(tmp_path))
    assert isinstance(objective.process, CosineProcess)
    assert objective.weighting == "min_snr" and objective.min_snr_gamma == 2.0
    with pytest.raises(ConfigError, match="objective.args.*min_snr_gamma"):
        toy_config(tmp_path, "objective.args={min_snr_gama: 2.0}")


def test_toy_components_train_and_sample_by_name(tmp_path):
    net = NETS.get("toy-convnet")(in_channels=1, resolution=8, num_classes=10)
    assert isinstance(net, DenoiserNet)

    result = train(toy_config(tmp_path / "run"))
    assert result.final_step == 2 and result.weights is not None and result.weights.is_file()

    SAMPLER_GRIDS.clear()
    ToyConvNet.noise_levels_seen.clear()
    out = tmp_path / "grid.png"
    assert diffaug_main(["sample", str(result.weights), "--out", str(out), "--per-class", "1"]) == 0
    with Image.open(out) as grid:
        width, height = grid.size
    assert width >= 8 and height >= 10 * 8  # one 8x8 row per digit class

    # The toy sampler drew every image, on the toy process's 3-step grid from t_max to t_min ...
    assert SAMPLER_GRIDS
    process = CosineProcess()
    for grid in SAMPLER_GRIDS:
        assert torch.allclose(grid, process.timesteps(3))
    # ... and the toy network saw the toy process's noise levels 1000 t at exactly those times.
    seen = {round(float(level), 6) for levels in ToyConvNet.noise_levels_seen for level in levels}
    assert seen == {round(float(1000.0 * t), 6) for t in process.timesteps(3)}
