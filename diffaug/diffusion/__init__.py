"""Noise processes, the denoiser parameterisation, training objectives and samplers.

Importing this package imports every module in it, which registers every process in ``PROCESSES`` and
every sampler in ``SAMPLERS``: a new process or sampler is one new file that registers itself.
"""

from diffaug.diffusion.ddpm import DDPMProcess, make_beta_schedule, respaced_betas, space_timesteps
from diffaug.diffusion.denoiser import (
    Denoiser,
    DenoiserFn,
    Parameterisation,
    Preconditioning,
    Prediction,
    Predictions,
    guided_x0,
)
from diffaug.diffusion.likelihood import Likelihood, bits_per_dim, dequantize, ode_likelihood
from diffaug.diffusion.losses import (
    WEIGHTINGS,
    EDMObjective,
    Objective,
    Weighting,
    bucket_losses,
    build_objective,
    check_objective_options,
    drop_labels,
)
from diffaug.diffusion.ncsn import NCSNProcess
from diffaug.diffusion.process import PROCESSES, GaussianProcess, Spacing, append_dims, build_process
from diffaug.diffusion.rng import StackedRandomGenerator
from diffaug.diffusion.samplers import (
    SAMPLERS,
    check_sampler_options,
    register_sampler,
    sample,
    sampling_grid,
)
from diffaug.diffusion.sde import VESDE, SubVPSDE, VPSDE
from diffaug.registry import import_submodules

import_submodules(__name__)

__all__ = [
    "DDPMProcess",
    "Denoiser",
    "EDMObjective",
    "DenoiserFn",
    "GaussianProcess",
    "Likelihood",
    "NCSNProcess",
    "Objective",
    "PROCESSES",
    "Parameterisation",
    "Preconditioning",
    "Prediction",
    "Predictions",
    "SAMPLERS",
    "Spacing",
    "StackedRandomGenerator",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "WEIGHTINGS",
    "Weighting",
    "append_dims",
    "bits_per_dim",
    "bucket_losses",
    "build_objective",
    "build_process",
    "check_objective_options",
    "check_sampler_options",
    "dequantize",
    "drop_labels",
    "guided_x0",
    "make_beta_schedule",
    "ode_likelihood",
    "register_sampler",
    "respaced_betas",
    "sample",
    "sampling_grid",
    "space_timesteps",
]
