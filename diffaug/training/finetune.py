"""Fine-tuning: start from a trained checkpoint, possibly on a different class set; freezing; LoRA.

Weights load strictly except the class embedding table when the class sets differ. Its rows are matched
by class NAME: a class present in both keeps its learned row, a new class keeps the fresh initialisation of
the new network (or starts from the learned null row, ``training.new_class_rows=null_row``, or from a named class
of the source, ``training.class_init``), and the learned null-class row (the last one, used by
classifier-free guidance) is kept. A folder instead of a checkpoint is a diffusers UNet
(``model.args.pretrained``), whose nameless class rows ``diffaug.nets.diffusers_unet.folder_state`` sizes for
the data's classes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from diffaug.checkpoint import load_state_strictly, read_raw_weights
from diffaug.config import ConfigError
from diffaug.diffusion.denoiser import Denoiser
from diffaug.nets.diffusers_unet import folder_state
from diffaug.nets.lora import LORA_TARGETS, add_lora
from diffaug.registry import did_you_mean

logger = logging.getLogger(__name__)

CLASS_TABLE_SUFFIX = "classes.table.weight"  # (num_classes + 1, D): one row per class, then the null class


def check_class_init(class_init: Mapping[str, str], old_names: Sequence[str], new_names: Sequence[str],
                     source: str) -> None:
    """``training.class_init`` maps classes of the data to classes of the ``source`` model; say which are not."""
    for new, old in class_init.items():
        if new not in new_names:
            raise ConfigError(f"training.class_init names {new!r}, which is no class of the data; valid names: "
                              f"{', '.join(new_names)}.{did_you_mean(new, list(new_names))}")
        if old not in old_names:
            shown = ", ".join(old_names) if len(old_names) <= 20 else \
                f"{', '.join(old_names[:20])}, ... ({len(old_names)} in all)"
            raise ConfigError(f"training.class_init maps {new!r} to {old!r}, which is no class of {source}; "
                              f"valid names: {shown}.{did_you_mean(old, list(old_names))}")


def remap_class_table(
    old_table: Tensor, new_table: Tensor, old_names: Sequence[str], new_names: Sequence[str], *,
    class_init: Mapping[str, str] | None = None, new_rows: str = "fresh",
) -> tuple[Tensor, dict[str, list[str]]]:
    """The new table with the rows of classes kept by name and the null row kept; plus a report.

    A class of ``class_init`` starts from the row of the source class it names (whether or not the source has
    a class of its own name); other new classes keep ``new_table``'s row ("fresh") or copy the null row."""
    if old_table.shape[0] != len(old_names) + 1 or new_table.shape[0] != len(new_names) + 1:
        raise ValueError(
            f"class tables must have one row per class plus the null class: got {old_table.shape[0]} rows "
            f"for {len(old_names)} old classes and {new_table.shape[0]} rows for {len(new_names)} new classes"
        )
    if old_table.shape[1:] != new_table.shape[1:]:
        raise ValueError(
            f"class embedding widths differ: {tuple(old_table.shape)} vs {tuple(new_table.shape)}"
        )
    if new_rows not in ("fresh", "null_row"):
        raise ValueError(f"new_rows must be 'fresh' or 'null_row', got {new_rows!r}")
    class_init = dict(class_init or {})
    table = new_table.detach().clone()
    old_index = {name: i for i, name in enumerate(old_names)}
    kept = [name for name in new_names if name in old_index and name not in class_init]
    for name in kept:
        table[new_names.index(name)] = old_table[old_index[name]].to(table.dtype)
    for name, source in class_init.items():
        table[new_names.index(name)] = old_table[old_index[source]].to(table.dtype)
    initialised = [name for name in new_names if name not in old_index and name not in class_init]
    if new_rows == "null_row":
        for name in initialised:
            table[new_names.index(name)] = old_table[-1].to(table.dtype)
    table[-1] = old_table[-1].to(table.dtype)  # the null class
    report = {
        "kept": kept,
        "initialised": initialised,
        "from_class": [f"{name} <- {source}" for name, source in class_init.items()],
        "dropped": [name for name in old_names if name not in set(new_names)],
    }
    return table, report


def _is_class_table(denoiser: Denoiser, key: str) -> bool:
    """A state-dict key (under the denoiser) of the network's class table."""
    own = getattr(denoiser.net, "class_table", None)
    return key.endswith(CLASS_TABLE_SUFFIX) or (own is not None and key == f"net.{own}")


def _load_folder(denoiser: Denoiser, path: str, class_names: Sequence[str]) -> dict[str, list[str]]:
    state, report = folder_state(denoiser.net, path, list(class_names))
    load_state_strictly(denoiser.net, state, source=path)
    return report


def load_pretrained(denoiser: Denoiser, path: str, class_names: Sequence[str], *,
                    class_init: Mapping[str, str] | None = None, new_class_rows: str = "fresh",
                    autoencoder_sha256: str | None = None) -> dict[str, list[str]]:
    """Load ``path``'s EMA weights (or a diffusers folder's) into ``denoiser`` (built for ``class_names``);
    returns the class report. ``autoencoder_sha256``: the run's autoencoder (None: a pixel run); a diffaug
    source must have been trained on the same latents (or, like the run, on pixels)."""
    if Path(path).is_dir():
        if class_init:
            raise ConfigError(f"training.class_init copies named class rows, but {path} is a diffusers folder "
                              "whose class rows have no names; remove training.class_init")
        report = _load_folder(denoiser, path, class_names)
        report.setdefault("from_class", [])
        _log_report(path, report, class_names, "fresh", "rows taken by index; the null-class row is new")
        return report
    # The source's config is not validated: it would read the source's autoencoder folder, which may have
    # moved; the run names its own, and the content hashes say whether the two are the same autoencoder.
    state, source_config, old_map = read_raw_weights(path, use_ema=True)
    check_source_autoencoder(path, (source_config.get("model") or {}).get("autoencoder_sha256"),
                             autoencoder_sha256)
    own = denoiser.state_dict()
    report = {"kept": list(class_names), "initialised": [], "from_class": [], "dropped": []}
    table_keys = sorted({k for k in (*state, *own) if _is_class_table(denoiser, k)})
    if len(table_keys) > 1:
        raise ValueError(f"expected at most one class embedding table, found {table_keys}")
    if class_init and not (table_keys and table_keys[0] in state and table_keys[0] in own):
        raise ConfigError(f"training.class_init copies class rows of {path}, but it or the new model is "
                          "unconditional (no class table); remove training.class_init")
    for key in table_keys:
        if key in state and key in own:
            check_class_init(class_init or {}, old_map.names, list(class_names), path)
            state[key], report = remap_class_table(state[key], own[key], old_map.names, list(class_names),
                                                   class_init=class_init, new_rows=new_class_rows)
        elif key in own:  # unconditional source -> conditional model: all rows new
            # Zero rows: the class embedding is added to the noise-level embedding, so the new model starts
            # as exactly the pretrained unconditional one for every class (and the null class), and
            # fine-tuning only has to learn how classes differ (the unlabelled-pool -> k-shot path).
            state[key] = torch.zeros_like(own[key])
            report = {"kept": [], "initialised": list(class_names), "from_class": [], "dropped": []}
        else:  # conditional source -> unconditional model
            del state[key]
            report = {"kept": [], "initialised": [], "from_class": [], "dropped": list(old_map.names)}
    load_state_strictly(denoiser, state, source=path)
    _log_report(path, report, class_names, new_class_rows)
    return report


def _log_report(path: str, report: dict[str, list[str]], class_names: Sequence[str], new_class_rows: str,
                null_row: str = "the null-class row is kept") -> None:
    if report["initialised"] or report["dropped"] or report.get("from_class"):
        logger.warning(
            "fine-tuning from %s: class embedding rows kept for %s; newly initialised (%s) for %s; copied "
            "%s; dropped %s (%s)",
            path, report["kept"] or "none", new_class_rows, report["initialised"] or "none",
            report.get("from_class") or "none", report["dropped"] or "none", null_row,
        )
    else:
        logger.info("fine-tuning from %s: all %d classes matched by name", path, len(class_names))


def check_source_autoencoder(path: str, source: str | None, run: str | None) -> None:
    """A latent model fine-tunes only on the latents it learned: the same autoencoder, by content hash.

    A source that records none is taken as it is: a pixel model, or a converted public model (DiT's files
    denoise Stable Diffusion VAE latents but cannot record the folder's hash); its shapes are still checked."""
    if source is None or source == run:
        return
    found = f"autoencoder {run[:12]} (model.autoencoder)" if run else "no autoencoder (a pixel run)"
    raise ConfigError(f"training.init_from={path} was trained with autoencoder {source[:12]}, but this run has "
                      f"{found}; its weights denoise that autoencoder's latents: point model.autoencoder at the "
                      "folder it was trained with")


def freeze_prefixes(module: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Stop gradients for parameters whose names start with any prefix; each prefix must match something."""
    names = [n for n, _ in module.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] + "." + n.split(".")[1] if n.count(".") > 1 else n for n in names})
            raise ValueError(f"training.freeze prefix {prefix!r} matches no parameter; names start like: "
                             f"{', '.join(tops[:12])}")
    frozen = []
    for name, param in module.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def prepare_for_finetuning(
    denoiser: Denoiser,
    *,
    init_from: str | None,
    class_names: Sequence[str],
    freeze: Sequence[str] = (),
    lora_rank: int = 0,
    class_init: Mapping[str, str] | None = None,
    new_class_rows: str = "fresh",
    autoencoder_sha256: str | None = None,
) -> None:
    """In place: init_from, then LoRA (only adapters and the class table train), then freeze prefixes."""
    if init_from:
        load_pretrained(denoiser, init_from, class_names, class_init=class_init, new_class_rows=new_class_rows,
                        autoencoder_sha256=autoencoder_sha256)
    if lora_rank > 0:
        denoiser.requires_grad_(False)
        adapted = add_lora(denoiser.net, rank=lora_rank,
                           targets=getattr(denoiser.net, "lora_targets", LORA_TARGETS))
        for name, param in denoiser.named_parameters():
            # New classes need their embedding rows learned, which a low-rank update elsewhere cannot do.
            if ".lora_" in name or _is_class_table(denoiser, name):
                param.requires_grad_(True)
        logger.info("LoRA rank %d on %d layers", lora_rank, len(adapted))
    if freeze:
        frozen = freeze_prefixes(denoiser, freeze)
        logger.info("froze %d parameter tensors (prefixes %s)", len(frozen), list(freeze))
    trainable = sum(p.numel() for p in denoiser.parameters() if p.requires_grad)
    total = sum(p.numel() for p in denoiser.parameters())
    if init_from or lora_rank or freeze:
        logger.info("%d of %d parameters train", trainable, total)
