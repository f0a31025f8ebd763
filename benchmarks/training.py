"""Training steps under test: ours (diffaug's DiffusionModule) and the diffusers reference.

Ours is the module's own step without Lightning's loop: ``DiffusionModule.denoising_loss`` (seeds, label
dropout, the objective's loss through the Denoiser), the non-finite check and loss-bucket bookkeeping of
``training_step``, backward, gradient clipping at 1.0 (the config default), the optimizer and
learning-rate scheduler from ``configure_optimizers``, and the EMA update. Mixed precision is autocast
around the forward pass, as Lightning's "bf16-mixed" does.

The reference is diffusers' examples/unconditional_image_generation recipe: DDPMScheduler.add_noise, an
MSE on the noise, AdamW (torch's default implementation, as the recipe builds it), gradient clipping at 1.0,
a constant learning-rate scheduler and diffusers' EMAModel (its foreach update, the faster one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.suite import BenchConfig, build_reference, reference_forward

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synthetic_batch(config: BenchConfig, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Images in [-1, 1] and labels; data loading is measured on its own (benchmarks.loader)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch_size, *config.image_shape), generator=g) * 2 - 1
    labels = torch.randint(0, config.num_classes or 1, (batch_size,), generator=g)
    return x0.to(device), labels.to(device)


def _tensor_bytes(tensors: Iterable[Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)]


class Candidate:
    """One training setup; ``step(i)`` runs optimizer step i on the fixed batch."""

    label: str
    net: nn.Module

    def step(self, i: int) -> None:
        raise NotImplementedError

    def persistent_bytes(self) -> int:
        """Bytes that live between steps: weights, buffers, EMA and optimizer state (gradients are freed)."""
        raise NotImplementedError

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


class Ours(Candidate):
    def __init__(self, config: BenchConfig, device: torch.device, precision: str, *, compile: bool = False,
                 grad_checkpointing: bool = False, batch_size: int, channels_last: bool = False):
        from diffaug.config import load_config
        from diffaug.training import DiffusionModule

        overrides = [
            f"model.net={config.net}", f"data.channels={config.channels}",
            f"data.resolution={config.resolution}", f"model.grad_checkpointing={grad_checkpointing}",
            f"training.compile={compile}", "training.warmup_steps=0",
        ]
        if channels_last and config.kind == "unet":
            overrides.append("model.args={channels_last: true}")
        cfg = load_config([], overrides)
        classes = [str(c) for c in range(config.num_classes or 1)]
        self.label = "ours" + ("+ckpt" if grad_checkpointing else "")
        self.module = DiffusionModule.from_config(cfg, config.num_classes, classes).to(device)
        self.module.train()
        self.net = self.module.denoiser.net
        optimizers = self.module.configure_optimizers()
        self.optimizer = optimizers["optimizer"]
        self.scheduler = optimizers["lr_scheduler"]["scheduler"]
        self.params = [p for p in self.module.denoiser.parameters() if p.requires_grad]
        self.grad_clip = cfg.training.grad_clip
        self.device, self.precision = device, precision
        self.batch = synthetic_batch(config, batch_size, device)

    def step(self, i: int) -> None:
        module = self.module
        with autocast(self.device, self.precision):
            per_sample, t = module.denoising_loss(self.batch, i)
            loss = per_sample.mean()
        if not bool(torch.isfinite(loss)):  # training_step's check: a host sync every step, as there
            raise FloatingPointError(f"non-finite loss {loss.item()} at benchmark step {i}")
        module._accumulate_buckets(per_sample.detach(), t)  # training_step's per-bucket loss bookkeeping
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        module.ema.update(module.denoiser, batch_images=self.batch[0].shape[0])

    def persistent_bytes(self) -> int:
        return _tensor_bytes([*self.module.state_dict(keep_vars=True).values(),
                              *_optimizer_tensors(self.optimizer)])


class Reference(Candidate):
    def __init__(self, config: BenchConfig, device: torch.device, precision: str, *, compile: bool = False,
                 grad_checkpointing: bool = False, batch_size: int):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.label = "ref" + ("+ckpt" if grad_checkpointing else "")
        self.net = build_reference(config).to(device).train()
        if grad_checkpointing:
            self.net.enable_gradient_checkpointing()
        self.forward = reference_forward(config)
        self.compiled = torch.compile(self.net) if compile else self.net
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=2e-4, betas=(0.9, 0.999),
                                           weight_decay=0.0)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        self.ema = EMAModel(self.net.parameters(), decay=0.9999, use_ema_warmup=True, foreach=True)
        self.device, self.precision = device, precision
        self.batch = synthetic_batch(config, batch_size, device)
        self.generator = torch.Generator(device)

    def step(self, i: int) -> None:
        x0, labels = self.batch
        g = self.generator.manual_seed(i)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],),
                                  generator=g, device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)
        with autocast(self.device, self.precision):
            prediction = self.forward(self.compiled, noisy, timesteps, labels)
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.net.parameters())

    def persistent_bytes(self) -> int:
        return _tensor_bytes([*self.net.state_dict(keep_vars=True).values(), *self.ema.shadow_params,
                              *_optimizer_tensors(self.optimizer)])


def build_candidate(kind: str, config: BenchConfig, device: torch.device, precision: str,
                    **options) -> Candidate:
    return {"ours": Ours, "ref": Reference}[kind](config, device, precision, **options)
