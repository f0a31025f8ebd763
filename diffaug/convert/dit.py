"""facebookresearch/DiT checkpoints -> diffaug: the released EMA state dicts (``DiT-XL-2-256x256.pt``) and
train.py's ``{"model", "ema", "opt", "args"}`` files (the EMA weights are converted).

DiT's models.py and diffaug's nets/dit.py compute the same network; only names differ:

    x_embedder.proj            -> patch_embed.proj            (timm PatchEmbed in both)
    t_embedder.mlp.0 / .2      -> cond.noise.mlp.fc1 / .fc2   (256 sin-cos frequencies, [cos | sin], shift 0)
    y_embedder.embedding_table -> cond.classes.table          (num_classes rows, then the null row)
    blocks.i.attn.qkv / .proj  -> the same                    (timm Attention: fused qkv, (3, heads, d) rows)
    blocks.i.mlp.fc1 / .fc2    -> the same                    (timm Mlp, tanh GELU)
    blocks.i.adaLN_modulation.1, final_layer.linear, final_layer.adaLN_modulation.1 -> the same
                                  (six-way chunk shift, scale, gate for attention then MLP; two-way for the end)
    pos_embed                  -> rebuilt from the config     (fixed sin-cos; checked, not loaded)

The head count is not in any shape; it comes from train.py's args, the paper's sizes, or ``num_heads``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from torch import Tensor

from diffaug.convert.common import (
    CONVERTERS,
    ConversionSummary,
    ConvertOptions,
    ConvertError,
    DiTShape,
    check_fixed_pos_embed,
    check_resolution,
    class_names_for,
    drop_sigma,
    heads_from_sizes,
    load_torch_checkpoint,
    square_grid,
    write_converted,
)
from diffaug.progress import progress as progress_bar

LAYOUT = "facebookresearch/DiT"
# Source key pattern -> diffaug key; every key of a DiT state dict matches exactly one, pos_embed aside.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"x_embedder\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"t_embedder\.mlp\.0\.(weight|bias)", r"cond.noise.mlp.fc1.\1"),
    (r"t_embedder\.mlp\.2\.(weight|bias)", r"cond.noise.mlp.fc2.\1"),
    (r"y_embedder\.embedding_table\.weight", r"cond.classes.table.weight"),
    (r"blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|adaLN_modulation\.1)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"final_layer\.(linear|adaLN_modulation\.1)\.(weight|bias)", r"final_layer.\1.\2"),
)
# train.py's args: model name ("DiT-XL/2") -> head count, the one hyperparameter no shape records.
HEADS_BY_MODEL = {"S": 6, "B": 12, "L": 16, "XL": 16}


def _load(src: Path) -> object:
    """Tensors and plain data, plus train.py's argparse Namespace."""
    return load_torch_checkpoint(src, kind="DiT", allowed=[argparse.Namespace],
                                 holds="tensors, plain data and train.py's args")


def _state_and_args(obj: object, src: Path) -> tuple[dict[str, Tensor], argparse.Namespace | None, list[str]]:
    """The EMA state dict of either layout, train.py's args, and what of the file is not converted."""
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        others = sorted(k for k in obj if k != "ema")
        dropped = [f"{k} ({'raw weights; the EMA is converted' if k == 'model' else 'training state'})"
                   for k in others]
        args = obj.get("args") if isinstance(obj.get("args"), argparse.Namespace) else None
        return obj["ema"], args, dropped
    if isinstance(obj, dict) and "x_embedder.proj.weight" in obj:
        return obj, None, []
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise ConvertError(
        f"{src} is not a facebookresearch/DiT checkpoint: expected an EMA state dict (x_embedder.proj.weight, "
        f"blocks.0.attn.qkv.weight, ...) or train.py's {{model, ema, opt, args}}, found {keys}; for a diffusers "
        "folder use `diffaug convert diffusers-dit`"
    )


def _num_heads(given: int | None, args: argparse.Namespace | None, depth: int, hidden: int, src: Path) -> int:
    if given is not None:
        return given
    model = getattr(args, "model", None)
    found = re.fullmatch(r"DiT-(S|B|L|XL)/\d", model) if isinstance(model, str) else None
    heads = HEADS_BY_MODEL[found.group(1)] if found else heads_from_sizes(depth, hidden)
    if heads is None:
        raise ConvertError(f"{src}: depth {depth} and width {hidden} are none of the paper's DiT sizes, and the "
                           "head count is in no tensor shape; pass --num-heads N")
    return heads


def infer_shape(state: dict[str, Tensor], src: Path, *, num_heads: int | None = None,
                args: argparse.Namespace | None = None, resolution: int | None = None) -> DiTShape:
    """DiT's hyperparameters from the keys and shapes of its state dict."""
    proj = state["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = len({k.split(".")[1] for k in state if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.weight", k)})
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if "pos_embed" in state:
        native = square_grid(state["pos_embed"].shape[1], src) * patch
    elif resolution is None:
        raise ConvertError(f"{src} has no pos_embed to read the resolution from; pass --resolution N")
    else:
        native = resolution
    return DiTShape(
        depth=depth, hidden_size=hidden, num_heads=_num_heads(num_heads, args, depth, hidden, src),
        patch_size=patch, in_channels=in_channels, out_channels=out_channels,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,  # the last row is the null class
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        resolution=check_resolution(resolution or native, patch, src),
    )


def rename(key: str) -> str | None:
    for pattern, replacement in RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def convert(src: str | os.PathLike, out: str | os.PathLike, *, options: ConvertOptions = ConvertOptions(),
            progress: bool = True) -> ConversionSummary:
    """Convert a DiT ``.pt`` file into ``out`` (diffaug's model.safetensors); returns what was done."""
    src = Path(src)
    state, args, dropped = _state_and_args(_load(src), src)
    unknown = sorted(k for k in state if k != "pos_embed" and rename(k) is None)
    if unknown or "x_embedder.proj.weight" not in state:
        raise ConvertError(f"{src}: keys {unknown[:5]} are not DiT's (models.py); is it another network?")
    shape = infer_shape(state, src, num_heads=options.num_heads, args=args, resolution=options.resolution)
    notes = []
    if "pos_embed" in state:
        grid = square_grid(state["pos_embed"].shape[1], src)
        check_fixed_pos_embed(state["pos_embed"], shape.hidden_size, grid, src)
        dropped.append("pos_embed (fixed sin-cos, rebuilt from the config)")
        if grid * shape.patch_size != shape.resolution:
            notes.append(f"trained at {grid * shape.patch_size}, converted for {shape.resolution} (the fixed "
                         "position table is rebuilt for the new grid)")
    net_state = {}
    for key in progress_bar(sorted(k for k in state if k != "pos_embed"), desc="converting", unit="tensor",
                            enabled=progress):
        net_state[rename(key)] = state[key].float()
    if shape.learn_sigma and not options.keep_sigma:
        net_state["final_layer.linear.weight"], net_state["final_layer.linear.bias"] = drop_sigma(
            net_state["final_layer.linear.weight"], net_state["final_layer.linear.bias"], shape.patch_size,
            shape.in_channels)
        dropped.append("learned-sigma outputs (the variance half of final_layer.linear)")
    names = class_names_for(shape.num_classes, options.class_names, src)
    return write_converted(net_state, shape, src=src, out=out, layout=LAYOUT, class_names=names,
                           keep_sigma=options.keep_sigma, dropped=dropped, notes=notes)


CONVERTERS.add("dit", convert)
