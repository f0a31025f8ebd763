"""Self-describing checkpoints: the file format a training run writes, and reading it back.

Two files carry a model out of a run:

- Lightning ``.ckpt`` files (resume, fine-tuning, inference): ``state_dict`` holds the live denoiser under
  ``denoiser.`` and its EMA under ``ema.module.``; ``checkpoint["diffaug"]`` holds
  ``{"config": <resolved config dict>, "class_names": [...], "format_version": 1}`` in plain Python types, so
  the whole file loads with ``torch.load(weights_only=True)``.
- ``model.safetensors`` (inference): the EMA denoiser's weights (LoRA merged in), with the config and class
  names as JSON in the file's metadata.

Both are read without unpickling code; ``diffaug.inference.load_for_inference`` loads them strictly into a
denoiser rebuilt from the stored config.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from diffaug.config import ConfigError, config_from_dict
from diffaug.data import ClassMap
from diffaug.nets.lora import merge_lora_state_dict

FORMAT_VERSION = 1
CHECKPOINT_KEY = "diffaug"
LIVE_PREFIX = "denoiser."
EMA_PREFIX = "ema.module."


class CheckpointError(ValueError):
    """A file that is not a loadable diffaug checkpoint, with the reason and the fix."""


def checkpoint_metadata(config: dict, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The ``checkpoint["diffaug"]`` entry: plain types only, so weights_only loading accepts it."""
    return {"config": config, "class_names": list(class_names), "format_version": FORMAT_VERSION}


# ---------------------------------------------------------------- reading


def _reason(error: BaseException) -> str:
    """The first sentence of an error, for a one-line message."""
    text = str(error).strip().splitlines()[0].split(". ", 1)[0].rstrip(".") if str(error).strip() else ""
    name = type(error).__name__
    return text if len(text) > 20 else f"{name}: {text}" if text else name  # "KeyError: 101", "EOFError"


def _torch_load(path: Path, map_location: Any, *, mmap: bool = False) -> dict:
    mmap = mmap and zipfile.is_zipfile(path)  # torch maps only its zip format; others are read (and refused)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol, before the refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(\. |\n|$)", str(error))
        what = found.group(1).strip() if found else _reason(error)
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain data, which "
            f"could run code when unpickled ({what}). diffaug checkpoints never contain such objects; "
            "only load files from a source you trust"
        ) from None
    except Exception as error:  # noqa: BLE001 (a damaged file fails in many ways: EOF, zip, pickle opcodes)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(error)}. "
            "Copy it again, or use another checkpoint of the run"
        ) from None


def _unreadable_safetensors(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file (truncated or corrupt?): {_reason(error)}. "
        "Copy it again, or load a .ckpt of the run (checkpoints/last.ckpt) instead"
    )


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as error:
        raise _unreadable_safetensors(path, error) from None


def read_lightning_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False
) -> dict:
    """The raw checkpoint dict, after checking it carries diffaug's metadata. ``mmap=True`` maps the tensors
    instead of reading them: a cheap check of a large file before Lightning loads it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = _torch_load(path, map_location, mmap=mmap)
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "config" not in meta or "class_names" not in meta:
        raise CheckpointError(
            f"{path} is not a diffaug checkpoint: it has no {CHECKPOINT_KEY!r} entry with the config and "
            "class names; use a .ckpt written by diffaug training or its model.safetensors"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {meta['format_version']}, newer than this diffaug reads "
            f"({FORMAT_VERSION}); upgrade diffaug"
        )
    return checkpoint


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def read_weights(
    path: str | os.PathLike, *, use_ema: bool = True, map_location: Any = "cpu", autoencoder: str | None = None
) -> tuple[dict[str, Tensor], DictConfig, ClassMap]:
    """(denoiser state dict with LoRA merged, config, class map) from a .ckpt or .safetensors file.

    ``autoencoder``: a latent model's autoencoder folder where it is now, if it moved since training (set
    before the config is validated, which reads the folder; the content hash is checked by the caller,
    build.verify_autoencoder)."""
    state, config, class_map = read_raw_weights(path, use_ema=use_ema, map_location=map_location)
    if autoencoder is not None:
        if not (config.get("model") or {}).get("autoencoder_sha256"):
            raise ConfigError(f"model.autoencoder={autoencoder} was given, but {path} is a pixel model: it has no "
                              "autoencoder; remove the override")
        config = {**config, "model": {**config["model"], "autoencoder": str(autoencoder)}}
    return state, config_from_dict(config), class_map


def read_raw_weights(
    path: str | os.PathLike, *, use_ema: bool = True, map_location: Any = "cpu"
) -> tuple[dict[str, Tensor], dict, ClassMap]:
    """read_weights without validating the stored config (a plain dict): for callers that take only the
    weights and the class names, such as fine-tuning, which must not need the source's autoencoder folder."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not use_ema:
            raise CheckpointError(
                f"{path} holds only the EMA weights; load a .ckpt of the run for the raw (non-EMA) weights"
            )
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        meta = _safetensors_metadata(path)
        missing = sorted({"config", "class_names"} - set(meta))
        if missing:
            raise CheckpointError(
                f"{path} lacks the metadata {missing}; it was not written by diffaug training"
            )
        if int(meta.get("format_version", "0")) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has format {meta['format_version']}, newer than this diffaug reads; upgrade diffaug"
            )
        device = str(map_location) if map_location is not None else "cpu"
        try:
            state = load_file(str(path), device=device)
        except SafetensorError as error:
            raise _unreadable_safetensors(path, error) from None
        config, class_names = json.loads(meta["config"]), json.loads(meta["class_names"])
    else:
        checkpoint = read_lightning_checkpoint(path, map_location)
        prefix = EMA_PREFIX if use_ema else LIVE_PREFIX
        state = _strip_prefix(checkpoint.get("state_dict", {}), prefix)
        if not state:
            raise CheckpointError(f"{path} has no weights under {prefix!r} in its state_dict")
        meta = checkpoint[CHECKPOINT_KEY]
        config, class_names = meta["config"], meta["class_names"]
    return merge_lora_state_dict(state), config, ClassMap(tuple(class_names))


def load_state_strictly(module: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs and how to fix it."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") or "none"

        shapes = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
        raise CheckpointError(
            f"the weights in {source} do not fit the network built from its config: missing {show(missing)}; "
            f"unexpected {show(unexpected)}; shape mismatches {shapes or 'none'}. The file and the config "
            "stored with it disagree (or the network code changed since it was written)"
        )
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- writing


def save_weights(
    path: str | os.PathLike,
    state: dict[str, Tensor],
    *,
    config: dict,
    class_names: list[str] | tuple[str, ...],
) -> Path:
    """Write ``state`` as safetensors with the config and class names as metadata (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in merge_lora_state_dict(state).items()}
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config, sort_keys=True),
        "class_names": json.dumps(list(class_names)),
    }
    partial = path.with_name(path.name + ".partial")
    # Written through open() so the file gets the usual permissions (save_file creates it 0600).
    partial.write_bytes(safetensors_bytes(tensors, metadata=metadata))
    os.replace(partial, path)  # a reader never sees a half-written file, even if the job is killed here
    return path
