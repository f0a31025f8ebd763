"""Every training.precision the schema offers trains with the default gradient clipping, learns, and leaves
a checkpoint that loads; bf16-true keeps the EMA in float32 and resumes it exactly. On --device (cpu by
default; cuda on a GPU machine)."""

from __future__ import annotations

import math
import typing

import lightning.pytorch as pl
import pytest
import torch

from diffaug.build import build_datamodule, build_denoiser, build_objective
from diffaug.inference import load_for_inference
from diffaug.config.schema import TrainingConfig
from diffaug.training import train
from tests.training_helpers import StopAtStep, one_torch_thread, state_of, tiny_config  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.device]

PRECISIONS = typing.get_args(typing.get_type_hints(TrainingConfig)["precision"])
# 30 steps at a high learning rate: the loss of a zero-initialised eps-predictor (exactly E[eps^2] = 1 on the
# fixed batch) falls to about 0.27 in every precision on a CPU.
SETTINGS = ["training.max_steps=30", "training.lr=2e-3", "data.batch_size=16", "data.max_items=64",
            "training.checkpoint_every_n_steps=30"]


def on(device: torch.device) -> list[str]:
    return [f"training.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"]


class GradientNorms(pl.Callback):
    """The optimizer's settings, and the gradient norm of every step before and after clipping."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def norm(optimizer) -> float | None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return None
        norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
        return float(torch.linalg.vector_norm(norms))

    def on_train_start(self, trainer, pl_module):
        self.defaults = dict(trainer.optimizers[0].defaults)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before clipping
        self.before.append(self.norm(optimizer))

    def on_before_zero_grad(self, trainer, pl_module, optimizer):  # the previous step's, clipped
        if self.norm(optimizer) is not None:
            self.after.append(self.norm(optimizer))


def fixed_batch_loss(denoiser, cfg) -> float:
    """The float32 loss on the first 32 training images with fixed times and noise."""
    data = build_datamodule(cfg)
    data.setup("fit")
    x0 = torch.stack([data.train_set[i][0] for i in range(32)])  # (32, 1, 8, 8)
    labels = torch.tensor([data.train_set[i][1] for i in range(32)])
    objective = build_objective(cfg, denoiser.process)
    with torch.no_grad():
        per_sample, _ = objective.loss(denoiser.float().cpu(), x0, labels, torch.Generator().manual_seed(0))
    return float(per_sample.mean())


def test_the_schema_offers_the_four_precisions():
    assert set(PRECISIONS) == {"32-true", "bf16-mixed", "16-mixed", "bf16-true"}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_with_gradient_clipping_and_reloads(tmp_path, device, precision):
    cfg = tiny_config(tmp_path, *SETTINGS, *on(device), f"training.precision={precision}")
    assert cfg.training.grad_clip == 1.0  # the default, which fused AdamW under mixed precision refused
    seen = GradientNorms()
    result = train(cfg, callbacks=[seen])
    assert result.final_step == 30 and result.weights is not None
    # Fused AdamW unscales inside its step: not with a gradient scaler (16-mixed on a GPU; a CPU runs bf16).
    scaled = precision == "16-mixed" and device.type == "cuda"
    assert seen.defaults["fused"] is (None if scaled else True)
    # Clipping acted (to 1 within bf16 rounding); fp16's gradient scaler skips the first, overflowing steps.
    clipped = [norm for norm in seen.after if math.isfinite(norm)]
    assert max(seen.before) > 1.5 and len(clipped) >= 20 and max(clipped) < 1.01

    before = fixed_batch_loss(build_denoiser(cfg, 10), cfg)
    live, _, _, _ = load_for_inference(result.last_checkpoint, use_ema=False)
    ema, _, _, _ = load_for_inference(result.last_checkpoint)
    exported, _, _, _ = load_for_inference(result.weights)
    assert before == pytest.approx(1.0, abs=0.2)
    assert fixed_batch_loss(live, cfg) < 0.5 * before
    assert fixed_batch_loss(ema, cfg) < 0.5 * before
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), exported.state_dict().values()))

    weights = state_of(result.last_checkpoint, "denoiser.net.")
    averaged = state_of(result.last_checkpoint, "ema.module.net.")
    live_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {live_dtype}
    assert {v.dtype for v in averaged.values() if v.is_floating_point()} == {torch.float32}


def test_bf16_true_resumes_the_float32_ema_exactly(tmp_path, device):
    settings = [*on(device), "training.precision=bf16-true", "training.ema_halflife_kimg=1.0",
                f"training.deterministic={device.type == 'cuda'}"]  # GPU kernels are exact only then
    straight = train(tiny_config(tmp_path / "straight", *settings))
    train(tiny_config(tmp_path / "resumed", *settings), callbacks=[StopAtStep(4)])
    resumed = train(tiny_config(tmp_path / "resumed", *settings, "training.resume=auto"))
    assert straight.final_step == resumed.final_step == 8
    for prefix in ("denoiser.", "ema."):
        a, b = state_of(straight.last_checkpoint, prefix), state_of(resumed.last_checkpoint, prefix)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{prefix}: {different[:3]}"
    ema = state_of(resumed.last_checkpoint, "ema.module.")
    live = state_of(resumed.last_checkpoint, "denoiser.")
    # float32 holds what bf16 cannot: the average is not a bf16 value, the live weights are.
    name = next(k for k, v in ema.items() if v.dim() > 1 and live[k].abs().sum() > 0)  # a trained weight
    assert ema[name].dtype == torch.float32 and live[name].dtype == torch.bfloat16
    assert not torch.equal(ema[name], ema[name].bfloat16().float())


def test_deterministic_switch_resumes_exactly(tmp_path, device):
    settings = [*on(device), "training.deterministic=true", "training.precision=bf16-mixed"]
    straight = train(tiny_config(tmp_path / "straight", *settings))
    train(tiny_config(tmp_path / "resumed", *settings), callbacks=[StopAtStep(4)])
    resumed = train(tiny_config(tmp_path / "resumed", *settings, "training.resume=auto"))
    for prefix in ("denoiser.", "ema."):
        a, b = state_of(straight.last_checkpoint, prefix), state_of(resumed.last_checkpoint, prefix)
        assert all(torch.equal(a[k], b[k]) for k in a), prefix
    assert not torch.are_deterministic_algorithms_enabled()  # put back after the fit
