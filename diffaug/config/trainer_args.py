"""``training.trainer_args``: Trainer options diffaug has no key for, checked against lightning.Trainer.

The check runs when a config is loaded, so it lives with the config; it imports Lightning, which
``diffaug.config.load`` therefore imports only for a config that sets trainer_args.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl

from diffaug.config.load import ConfigError
from diffaug.registry import did_you_mean

# The Trainer options diffaug sets itself (diffaug.training.run.build_trainer), each with the config key that
# sets it (or why none does); training.trainer_args may not name them.
TRAINER_OWNED = {
    "default_root_dir": "run_dir",
    "max_steps": "training.max_steps",
    "max_epochs": "training.max_steps (diffaug counts optimizer steps)",
    "accelerator": "training.accelerator",
    "devices": "training.devices",
    "num_nodes": "training.num_nodes",
    "strategy": "training.strategy",
    "precision": "training.precision",
    "deterministic": "training.deterministic",
    "benchmark": "training.deterministic (cuDNN autotunes unless it is true)",
    "gradient_clip_val": "training.grad_clip",
    "accumulate_grad_batches": "training.accumulate_grad_batches",
    "log_every_n_steps": "training.log_every_n_steps",
    "val_check_interval": "training.val_every_n_steps",
    "check_val_every_n_epoch": "training.val_every_n_steps",
    "limit_val_batches": "data.val_fraction",
    "callbacks": "the callbacks argument of diffaug.training.train",
    "logger": "logging.logger",
    "enable_progress_bar": "logging.progress_bar",
    "use_distributed_sampler": "nothing: diffaug's resumable sampler splits the data across ranks",
    "plugins": "cluster.requeue (SLURM) and training.precision",
}
# Defaults diffaug picks that training.trainer_args may change.
TRAINER_DEFAULTS = {"num_sanity_val_steps": 0, "enable_model_summary": False}


def check_trainer_args(args: dict[str, Any]) -> None:
    """ConfigError for a name lightning.Trainer does not take, or one diffaug sets from its own keys."""
    valid = sorted(set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"} - set(TRAINER_OWNED))
    for name in args:
        if name in TRAINER_OWNED:
            raise ConfigError(f"invalid key {name!r} in training.trainer_args: diffaug sets the Trainer's "
                              f"{name} itself; use {TRAINER_OWNED[name]}")
        if name not in valid:
            raise ConfigError(f"invalid key {name!r} in training.trainer_args: lightning.Trainer takes no such "
                              f"option; valid names: {', '.join(valid)}.{did_you_mean(name, valid)}")
