"""Sampling under test: diffaug's export path against diffusers' pipelines, at equal NFE and network size.

Ours is ``diffaug.sampling.generate.generate_images``, what ``diffaug export`` runs: per-image seeds, the
sampler from the registry, the network called on fixed-shape microbatches, uint8 images out. The reference
is DDPMPipeline (DDPMScheduler), DDIMPipeline (DDIMScheduler) and DDPMPipeline with a
DPMSolverMultistepScheduler (DPM-Solver++ 2M) for the UNets; for the DiTs, whose DiTPipeline needs a VAE
and always applies guidance, the same scheduler loop as those pipelines on the latent-sized input.
Float images out in both cases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.suite import BenchConfig, build_reference

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # as reported
    ours: str  # diffaug sampler name
    steps: int  # grid times = network evaluations per image in both implementations


def sampler_specs(ddpm_steps: int) -> list[SamplerSpec]:
    return [SamplerSpec(f"ddpm-{ddpm_steps}", "ddpm", ddpm_steps), SamplerSpec("ddim-50", "ddim", 50),
            SamplerSpec("dpmpp_2m-20", "dpmpp_2m", 20)]


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def our_sampler(config: BenchConfig, device: torch.device, precision: str,
                microbatch: int) -> tuple[Callable[[SamplerSpec, int, int], torch.Tensor], torch.nn.Module]:
    """``fn(spec, batch, first_seed) -> uint8 images`` and the network it runs."""
    from diffaug.augset.plan import WorkItem
    from diffaug.build import build_denoiser
    from diffaug.config import load_config
    from diffaug.sampling.generate import generate_images

    cfg = load_config([], [f"model.net={config.net}", f"data.channels={config.channels}",
                           f"data.resolution={config.resolution}"])
    denoiser = build_denoiser(cfg, config.num_classes).to(device).eval()
    classes = config.num_classes or 1

    def run(spec: SamplerSpec, batch: int, first_seed: int = 0) -> torch.Tensor:
        items = [WorkItem(class_index=i % classes, index=i, seed=first_seed + i, guidance=1.0)
                 for i in range(batch)]
        # generate_images applies bf16 on CUDA only, as sampling.precision does.
        # x0 clipped where diffusers' schedulers clip by default (DDPM, DDIM: clip_sample=True), as diffaug
        # export does by default (sampling.clip_x0).
        clip = {"clip_x0": spec.ours in ("ddpm", "ddim")}
        return generate_images(denoiser, denoiser.process, items, image_shape=config.image_shape,
                               sampler=spec.ours, steps=spec.steps, device=device, sampler_args=clip,
                               precision="bf16" if precision == "bf16" else "32", microbatch=microbatch)

    return run, denoiser.net


def _scheduler(spec: SamplerSpec):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if spec.ours == "ddpm":
        return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    if spec.ours == "ddim":
        return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    return DPMSolverMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, algorithm_type="dpmsolver++",
                                       solver_order=2)


def reference_sampler(config: BenchConfig, device: torch.device,
                      precision: str) -> tuple[Callable[[SamplerSpec, int, int], object], torch.nn.Module]:
    """``fn(spec, batch, seed) -> float images`` with diffusers' pipelines, and the network it runs."""
    from diffusers import DDIMPipeline, DDPMPipeline
    from diffusers.utils.torch_utils import randn_tensor

    model = build_reference(config).to(device).eval()

    def run(spec: SamplerSpec, batch: int, seed: int = 0):
        generator = torch.Generator(device).manual_seed(seed)
        scheduler = _scheduler(spec)
        with torch.no_grad(), _autocast(device, precision):
            if config.kind == "unet":
                pipeline_class = DDIMPipeline if spec.ours == "ddim" else DDPMPipeline
                pipeline = pipeline_class(unet=model, scheduler=scheduler)
                pipeline.set_progress_bar_config(disable=True)
                return pipeline(batch_size=batch, generator=generator, num_inference_steps=spec.steps,
                                output_type="np").images
            # DiTPipeline without its VAE decode and guidance: its denoising loop on the latent-sized input.
            labels = torch.arange(batch, device=device) % (config.num_classes or 1)
            x = randn_tensor((batch, *config.image_shape), generator=generator, device=device)
            scheduler.set_timesteps(spec.steps)
            for t in scheduler.timesteps:
                timesteps = t.to(device).expand(batch)
                out = model(x, timestep=timesteps, class_labels=labels).sample
                x = scheduler.step(out, t, x, generator=generator).prev_sample
            return (x / 2 + 0.5).clamp(0, 1).float().cpu().numpy()

    return run, model
