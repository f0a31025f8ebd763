"""Half-precision weights (bf16-true) without half-precision bookkeeping: training times, noise-level
embeddings and random draws stay float32 under a bf16 default dtype, the EMA stays float32 and keeps the
updates bf16 would round away, and sample grids and the quality monitor sample bf16 weights. Plus the host
syncs the hot loop no longer makes."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffaug.build import build_denoiser
from diffaug.config import load_config
from diffaug.diffusion.losses import drop_labels
from diffaug.diffusion.process import build_process
from diffaug.diffusion.rng import StackedRandomGenerator
from diffaug.nets.embeddings import sinusoidal_embedding
from diffaug.sampling.settings import SampleSettings
from diffaug.training.callbacks import SampleGrid
from diffaug.training.ema import EMA
from diffaug.training.quality_monitor import quality_samples
from tests.training_helpers import TINY_NET, one_torch_thread  # noqa: F401 (autouse fixture)


@contextmanager
def default_dtype(dtype: torch.dtype):
    """What Lightning's bf16-true does around every training and validation step."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def test_times_draws_and_embeddings_stay_float32_under_a_bf16_default_dtype():
    levels = torch.tensor([997.0, 998.0, 999.0])
    reference = sinusoidal_embedding(levels, 128)  # (3, 128) under the float32 default
    ddpm, vp = build_process("ddpm"), build_process("vp")
    g = torch.Generator().manual_seed(0)
    with default_dtype(torch.bfloat16):
        t_ddpm = ddpm.sample_train_t(4096, generator=g)
        t_vp = vp.sample_train_t(4096, generator=g)
        embedding = sinusoidal_embedding(levels, 128)
        dropped = drop_labels(torch.zeros(4096, dtype=torch.long), 0.1, 10, g)
        prior = ddpm.prior_sample((2, 1, 4, 4), generator=g)
        noise = StackedRandomGenerator([0, 1]).randn((2, 1, 4, 4))
    assert t_ddpm.dtype == t_vp.dtype == prior.dtype == noise.dtype == torch.float32
    # bf16 holds integers exactly only up to 256: step 999 would train as step 1000.
    assert t_ddpm.max() == 999 and len(t_ddpm.unique()) > 900
    assert len(t_vp.unique()) > 4000  # not 8-bit times
    assert torch.equal(embedding, reference)  # bit for bit what the float32 default computes
    assert (embedding[1] - embedding[2]).abs().max() > 0.5  # neighbouring steps stay apart
    assert 0.08 < (dropped == 10).float().mean() < 0.12


def test_the_ema_stays_float32_and_keeps_updates_bf16_rounds_away():
    net = nn.Linear(8, 8).to(torch.bfloat16)
    ema = EMA(net, halflife_kimg=1.0, rampup=None)
    # The whole LightningModule is converted under bf16-true: the EMA moves, its dtypes do not.
    holder = nn.ModuleDict({"net": net, "ema": ema}).to(torch.bfloat16)
    assert holder["ema"].module.weight.dtype == torch.float32 and ema.images_seen.dtype == torch.float64
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(net.weight.abs() * 2**-6)  # weights move by a few bf16 steps
    beta = ema.update(net, batch_images=1)  # (1 - beta) ~ 7e-4
    moved = ema.module.weight - start
    assert (moved != 0).float().mean() > 0.99
    # The same lerp in bf16 leaves almost every weight where it was.
    in_bf16 = torch.lerp(start.bfloat16(), net.weight.detach(), 1.0 - beta)
    assert (in_bf16.float() != start.bfloat16().float()).float().mean() < 0.05


def test_the_ema_reads_the_image_count_from_the_device_once_per_load():
    net = nn.Linear(2, 2)
    ema = EMA(net, halflife_kimg=10.0, rampup=0.05)
    ema.update(net, batch_images=100)
    ema.images_seen.fill_(1e9)  # a change the host copy does not see: updates never read the buffer
    beta = ema.update(net, batch_images=100)
    assert beta == pytest.approx(0.5 ** (100 / (100 * 0.05)))  # ramp-up at 100 images seen, not 1e9
    state = ema.state_dict()
    state["images_seen"] = torch.tensor(1000.0, dtype=torch.float64)
    ema.load_state_dict(state)  # a resume: the loaded count counts
    assert ema.update(net, batch_images=100) == pytest.approx(0.5 ** (100 / (1000 * 0.05)))
    assert float(ema.images_seen) == 1100


@pytest.mark.device
def test_the_ddpm_table_is_copied_to_a_device_once(device):
    process = build_process("ddpm")
    t = torch.tensor([0.0, 500.0, 999.0], device=device)
    first = process.alpha_sigma(t)
    pointer = process._tables[t.device].data_ptr()
    for _ in range(3):
        again = process.alpha_sigma(t)
    assert list(process._tables) == [t.device] and process._tables[t.device].data_ptr() == pointer
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    expected = process.alphas_cumprod[[0, 500, 999]].sqrt().float()
    torch.testing.assert_close(first[0].cpu(), expected)


@pytest.fixture(scope="module")
def denoisers():
    cfg = load_config([], [TINY_NET, "data.resolution=8"])
    torch.manual_seed(0)
    fp32 = build_denoiser(cfg, 3)
    with torch.no_grad():  # non-zero output layers, so that samples depend on the weights
        for p in fp32.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    return fp32.eval(), bf16.eval()


def test_sample_grids_and_the_quality_monitor_sample_bf16_weights(denoisers):
    fp32, bf16 = denoisers
    settings = SampleSettings(sampler="ddim", steps=4, seed=0, batch_size=4, microbatch=4)
    grid = SampleGrid(every_n_steps=1, out_dir=".", class_names=["a", "b", "c"], settings=settings, per_class=2)
    module = {name: SimpleNamespace(ema=SimpleNamespace(module=d), device=torch.device("cpu"))
              for name, d in (("fp32", fp32), ("bf16", bf16))}
    grids = {name: grid.make_grid(m) for name, m in module.items()}  # (C, H', W') uint8
    images = {name: quality_samples(d, n=6, class_names=["a", "b", "c"], settings=settings,
                                    device=torch.device("cpu"))[0] for name, d in (("fp32", fp32), ("bf16", bf16))}
    for pair in (grids, images):
        a, b = pair["fp32"].float(), pair["bf16"].float()
        assert a.shape == b.shape and a.std() > 5  # real images, not a constant
        assert (a - b).abs().mean() < 4  # bf16 rounding, not different images
