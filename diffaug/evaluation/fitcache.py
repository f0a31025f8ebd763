"""Trained benchmark classifiers kept on disk, keyed by everything that determines them.

A classifier of the downstream benchmark is a pure function of its inputs: the architecture, the recipe, the
augmentation, the seed, and the exact pixels and targets it trains and validates on. Re-running the benchmark
with one more synthetic set (another guidance scale, the pool-pretrained model next to the closed-set one)
would otherwise retrain every real-only baseline and candidate it already has; with a cache only the new
candidates train, and the results are the same bits as a run without it (the cached weights are the weights
the run would produce, and the test split is still read by the caller, once per arm and cell).

The key also holds the torch version and device type (kernels change the last bits), and a format version.
Entries are written atomically (weights, then the metadata file that marks the entry complete), so a killed
run leaves no entry that loads half.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from diffaug.augset.files import atomic_write_bytes, atomic_write_json
from diffaug.config import config_hash
from diffaug.evaluation.recipe import FitResult

FORMAT = 1


def tensor_digest(tensor: Tensor | None) -> str | None:
    if tensor is None:
        return None
    tensor = tensor.detach().cpu().contiguous()
    return hashlib.sha256(str((tensor.dtype, tuple(tensor.shape))).encode() + tensor.numpy().tobytes()).hexdigest()


class FitCache:
    """``directory/<key>.safetensors`` (the classifier's state at its best validation step) and ``<key>.json``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    @staticmethod
    def key(parts: dict[str, Any], device: torch.device) -> str:
        return config_hash({**parts, "format": FORMAT, "torch": torch.__version__, "device": device.type})[:32]

    def load(self, key: str, model: nn.Module) -> FitResult | None:
        """The cached fit with its weights loaded into ``model`` (strictly, in eval mode), or None."""
        meta_path = self.directory / f"{key}.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        model.load_state_dict(load_file(self.directory / f"{key}.safetensors"), strict=True)
        model.eval()
        return FitResult(model=model, steps=meta["steps"], best_step=meta["best_step"], best_val=meta["best_val"],
                         history=[tuple(h) for h in meta["history"]], real_seen=meta["real_seen"],
                         synthetic_seen=meta["synthetic_seen"])

    def save(self, key: str, fit: FitResult) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in fit.model.state_dict().items()}
        atomic_write_bytes(self.directory / f"{key}.safetensors", safetensors_bytes(state))
        meta = {"steps": fit.steps, "best_step": fit.best_step, "best_val": fit.best_val,
                "history": [list(h) for h in fit.history], "real_seen": fit.real_seen,
                "synthetic_seen": fit.synthetic_seen}
        atomic_write_json(self.directory / f"{key}.json", meta)  # last: its presence marks a complete entry
