"""Noise processes, the denoiser parameterisation, training objectives and samplers.

Importing this package registers every process in ``PROCESSES`` and every sampler in ``SAMPLERS``.
"""

from diffaug.diffusion import ddpm, ncsn, sde  # noqa: F401  (register the processes)
from diffaug.diffusion.ddpm import DDPMProcess, make_beta_schedule, respaced_betas, space_timesteps
from diffaug.diffusion.denoiser import Denoiser, DenoiserFn, Prediction, Predictions, guided_x0
from diffaug.diffusion.likelihood import Likelihood, bits_per_dim, dequantize, ode_likelihood
from diffaug.diffusion.losses import (
    DEFAULT_WEIGHTING,
    Objective,
    Weighting,
    bucket_losses,
    build_objective,
    drop_labels,
)
from diffaug.diffusion.ncsn import NCSNProcess
from diffaug.diffusion.process import PROCESSES, GaussianProcess, Spacing, append_dims, build_process
from diffaug.diffusion.rng import StackedRandomGenerator
from diffaug.diffusion.samplers import SAMPLERS, check_sampler_options, sample, sampling_grid
from diffaug.diffusion.sde import VESDE, SubVPSDE, VPSDE

__all__ = [
    "DDPMProcess",
    "DEFAULT_WEIGHTING",
    "Denoiser",
    "DenoiserFn",
    "GaussianProcess",
    "Likelihood",
    "NCSNProcess",
    "Objective",
    "PROCESSES",
    "Prediction",
    "Predictions",
    "SAMPLERS",
    "Spacing",
    "StackedRandomGenerator",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "Weighting",
    "append_dims",
    "bits_per_dim",
    "bucket_losses",
    "build_objective",
    "build_process",
    "check_sampler_options",
    "dequantize",
    "drop_labels",
    "guided_x0",
    "make_beta_schedule",
    "ode_likelihood",
    "respaced_betas",
    "sample",
    "sampling_grid",
    "space_timesteps",
]
