"""diffusers ``DiTTransformer2DModel`` folders (config.json + diffusion_pytorch_model.safetensors, or a
pipeline folder with them under transformer/) -> diffaug.

diffusers stores the same DiT with other names and a few structural copies:

    pos_embed.proj                           -> patch_embed.proj
    transformer_blocks.i.norm1.emb.*         -> cond.* (one copy per block; all must be equal: they are collapsed)
        timestep_embedder.linear_1 / _2      -> cond.noise.mlp.fc1 / fc2
        class_embedder.embedding_table       -> cond.classes.table
    transformer_blocks.i.norm1.linear        -> blocks.i.adaLN_modulation.1
    transformer_blocks.i.attn1.to_q/k/v      -> blocks.i.attn.qkv (concatenated: q rows, then k, then v)
    transformer_blocks.i.attn1.to_out.0      -> blocks.i.attn.proj
    transformer_blocks.i.ff.net.0.proj / .2  -> blocks.i.mlp.fc1 / fc2
    proj_out_1 / proj_out_2                  -> final_layer.adaLN_modulation.1 / final_layer.linear

The conversion computes what the original DiT computes, which differs from diffusers' forward in two places:
its time embedding uses frequencies 10000**(-i / (128 - 1)) (``downscale_freq_shift=1``) where DiT, trained
with them, uses 10000**(-i / 128) (shift 0); and its MLP LayerNorm uses ``norm_eps`` (1e-5 by default) where
DiT uses 1e-6. diffusers' DiT weights are converted from the original checkpoints, so shift 0 and 1e-6 are the
functions the weights were trained for. Both are recorded in the summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from diffaug.convert.common import (
    CONVERTERS,
    ConversionSummary,
    ConvertOptions,
    ConvertError,
    DiTShape,
    check_resolution,
    class_names_for,
    drop_sigma,
    write_converted,
)
from diffaug.progress import progress as progress_bar

LAYOUT = "diffusers DiTTransformer2DModel"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")
# The options that make a diffusers transformer a DiT; anything else is another network.
DIT_OPTIONS = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
               "norm_elementwise_affine": False, "cross_attention_dim": None}
DIT_NORM_EPS = 1e-6
EMBEDDER = "norm1.emb."
BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
TOP_RENAMES = {
    "pos_embed.proj": "patch_embed.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
COND_RENAMES = {
    "timestep_embedder.linear_1": "cond.noise.mlp.fc1",
    "timestep_embedder.linear_2": "cond.noise.mlp.fc2",
    "class_embedder.embedding_table": "cond.classes.table",
}


def _folder(src: Path) -> Path:
    if not src.exists():
        raise FileNotFoundError(f"diffusers model folder {src} does not exist")
    if src.is_file():
        src = src.parent
    if not (src / CONFIG_FILE).is_file() and (src / "transformer" / CONFIG_FILE).is_file():
        src = src / "transformer"  # a DiTPipeline folder
    return src


def _read(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise ConvertError(f"{folder} has no {CONFIG_FILE}: give the folder DiTTransformer2DModel.save_pretrained "
                           "wrote (or a DiTPipeline folder with transformer/ in it)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ConvertError(f"{config_path} is not valid JSON ({error.msg}, line {error.lineno}); copy it "
                           "again") from None
    if config.get("_class_name") not in CLASS_NAMES or any(
            config.get(key, value) != value for key, value in DIT_OPTIONS.items()):
        found = {k: config.get(k) for k in ("_class_name", *DIT_OPTIONS)}
        raise ConvertError(f"{config_path} is not a DiT transformer (expected {CLASS_NAMES[0]} with "
                           f"{DIT_OPTIONS}, found {found}); for facebookresearch/DiT .pt files use "
                           "`diffaug convert dit`")
    if not weights_path.is_file():
        raise ConvertError(f"{folder} has no {WEIGHTS_FILE}; save the model with "
                           "save_pretrained(..., safe_serialization=True)")
    try:
        return config, load_file(str(weights_path))
    except SafetensorError as error:
        raise ConvertError(f"{weights_path} is not a readable safetensors file (truncated or corrupt?): "
                           f"{str(error).splitlines()[0]}; download it again") from None


def _collapse_embedders(state: dict[str, Tensor], depth: int, src: Path) -> dict[str, Tensor]:
    """Each diffusers block holds its own copy of the time and class embedders; DiT has one. Equal copies
    collapse to one; unequal ones are a different network, refused."""
    first = {k[len(f"transformer_blocks.0.{EMBEDDER}"):]: v for k, v in state.items()
             if k.startswith(f"transformer_blocks.0.{EMBEDDER}")}
    for i in range(1, depth):
        for name, tensor in first.items():
            other = state.get(f"transformer_blocks.{i}.{EMBEDDER}{name}")
            if other is None or not torch.equal(other, tensor):
                raise ConvertError(f"{src}: block {i}'s {EMBEDDER}{name} differs from block 0's; DiT has one "
                                   "time and class embedder, so blocks with their own cannot be converted")
    return first


def _rename_block(i: int, rest: str, tensor: Tensor, out: dict[str, Tensor]) -> bool:
    module, _, kind = rest.rpartition(".")
    if module in BLOCK_RENAMES:
        out[f"blocks.{i}.{BLOCK_RENAMES[module]}.{kind}"] = tensor
        return True
    return rest.startswith(EMBEDDER) or module in ("attn1.to_q", "attn1.to_k", "attn1.to_v")


def convert(src: str | os.PathLike, out: str | os.PathLike, *, options: ConvertOptions = ConvertOptions(),
            progress: bool = True) -> ConversionSummary:
    """Convert a diffusers DiT folder into ``out`` (diffaug's model.safetensors); returns what was done."""
    folder = _folder(Path(src))
    config, state = _read(folder)
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    if options.num_heads is not None and options.num_heads != heads:
        raise ConvertError(f"{folder}: --num-heads {options.num_heads} disagrees with its config "
                           f"(num_attention_heads={heads}); drop --num-heads")
    depth, patch = int(config["num_layers"]), int(config["patch_size"])
    in_channels = int(config.get("in_channels", 4))
    out_channels = int(config.get("out_channels") or in_channels)
    hidden = heads * head_dim
    shape = DiTShape(
        depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, in_channels=in_channels,
        out_channels=out_channels, num_classes=int(config["num_embeds_ada_norm"]),
        mlp_ratio=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden,
        resolution=check_resolution(options.resolution or int(config["sample_size"]), patch, folder),
    )
    net_state = {f"{COND_RENAMES[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v
                 for k, v in _collapse_embedders(state, depth, folder).items()}
    unknown = []
    for key in progress_bar(sorted(state), desc="converting", unit="tensor", enabled=progress):
        module, _, kind = key.rpartition(".")
        parts = key.split(".", 2)
        if module in TOP_RENAMES:
            net_state[f"{TOP_RENAMES[module]}.{kind}"] = state[key]
        elif not (parts[0] == "transformer_blocks" and _rename_block(int(parts[1]), parts[2], state[key],
                                                                     net_state)):
            unknown.append(key)
    if unknown:
        raise ConvertError(f"{folder}: keys {unknown[:5]} are not DiTTransformer2DModel's; is it another network?")
    for i in range(depth):  # fused qkv: rows q, then k, then v, each (heads, head_dim) as in timm
        attn = f"transformer_blocks.{i}.attn1.to_"
        for kind in ("weight", "bias"):
            net_state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{attn}{p}.{kind}"] for p in "qkv"])
    net_state = {k: v.float() for k, v in net_state.items()}
    dropped = ([f"{depth - 1} repeated copies of the time and class embedders (equal to block 0's)"]
               if depth > 1 else [])
    if shape.learn_sigma and not options.keep_sigma:
        net_state["final_layer.linear.weight"], net_state["final_layer.linear.bias"] = drop_sigma(
            net_state["final_layer.linear.weight"], net_state["final_layer.linear.bias"], patch, in_channels)
        dropped.append("learned-sigma outputs (the variance half of proj_out_2)")
    notes = ["time embedding: frequency shift 0, as the original DiT (diffusers' forward uses "
             "downscale_freq_shift=1)"]
    eps = float(config.get("norm_eps", 1e-5))
    if eps != DIT_NORM_EPS:
        notes.append(f"MLP LayerNorm eps {DIT_NORM_EPS:g}, as the original DiT (diffusers' forward uses "
                     f"norm_eps={eps:g})")
    names = class_names_for(shape.num_classes, options.class_names, folder)
    return write_converted(net_state, shape, src=folder, out=out, layout=LAYOUT, class_names=names,
                           keep_sigma=options.keep_sigma, dropped=dropped, notes=notes)


CONVERTERS.add("diffusers-dit", convert)
