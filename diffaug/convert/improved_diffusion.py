"""openai/improved-diffusion and openai/guided-diffusion UNet checkpoints -> diffaug's UNet.

Both projects save plain state dicts (``ema_0.9999_*.pt``, ``model*.pt``, the released ``cifar10_uncond_50M_500K.pt``,
``256x256_diffusion.pt``, ...). Their ``UNetModel`` and diffaug's nets/unet.py compute the same network (ADM);
only names and two layouts differ:

    time_embed.0 / .2                        -> cond.noise.mlp.fc1 / .fc2   ([cos | sin], max period 10^4)
    label_emb                                -> cond.classes.table          (+ a null row: see below)
    input_blocks.i / middle_block / output_blocks.i -> down_blocks.i / middle / up_blocks.i
      ResBlock in_layers.0 / .2, emb_layers.1 -> norm1 / conv1, embed_proj
               out_layers.0 / .3, skip_connection -> norm2 / conv2, skip
               (h_upd / x_upd hold no weights: resblock_updown=True here too)
      AttentionBlock norm, qkv, proj_out     -> norm, attn.qkv, attn.proj   (Conv1d 1x1 -> Linear; qkv rows
               from (heads, 3, d), the legacy order, or (3, heads, d), use_new_attention_order, to (3, heads, d))
      Downsample op / Upsample conv          -> conv / conv
    out.0 / out.2                            -> out.0 / out.2               (learned-sigma channels sliced off)

No tensor records the image size, the attention head count, the attention order or the diffusion the model
was trained with; they are options, with the projects' defaults (4 heads, legacy order, 1000 linear steps) and
a note in the summary saying what was assumed. The released models' flags are in the projects' READMEs, e.g.
improved-diffusion's CIFAR-10: ``--resolution 32 --diffusion-steps 4000 --noise-schedule cosine``;
guided-diffusion's 256x256: ``--resolution 256 --head-channels 64``.

The class table gets diffaug's null row for classifier-free guidance, which these models were never trained
with; it starts as the mean of the class rows, and guidance means something only after fine-tuning with class
dropout (``objective.label_dropout``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffaug.config import load_config, to_dict
from diffaug.data.classmap import UNLABELLED_NAME
from diffaug.convert.common import (
    CONVERTERS,
    ConversionSummary,
    ConvertError,
    ConvertOptions,
    class_names_for,
    load_torch_checkpoint,
    save_converted,
)
from diffaug.progress import progress as progress_bar

LAYOUT = "openai improved-diffusion / guided-diffusion UNet"
NORM_GROUPS = 32  # ADM's normalization(): GroupNorm32(32, channels) everywhere
DEFAULT_HEADS = 4  # both projects' model_and_diffusion_defaults()
RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "embed_proj", "out_layers.0": "norm2",
            "out_layers.3": "conv2", "skip_connection": "skip"}
ATTENTION = {"norm": "norm", "qkv": "attn.qkv", "proj_out": "attn.proj"}
RESAMPLE = {"op": "conv", "conv": "conv"}  # Downsample.op, Upsample.conv
TOP = {"time_embed.0": "cond.noise.mlp.fc1", "time_embed.2": "cond.noise.mlp.fc2", "out.0": "out.0",
       "out.2": "out.2"}
BLOCKS = {"input_blocks": "down_blocks", "middle_block": "middle", "output_blocks": "up_blocks"}


@dataclass(frozen=True)
class ADMShape:
    """The UNet hyperparameters a checkpoint implies (from its keys and shapes), plus the given resolution."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[int, ...]  # levels (0 = full resolution) with attention
    use_scale_shift_norm: bool
    resblock_updown: bool
    num_classes: int
    resolution: int

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def attention_resolutions(self) -> tuple[int, ...]:
        return tuple(self.resolution // 2**level for level in self.attention_levels)


def _modules(state: dict[str, Tensor], group: str) -> dict[int, dict[int, set[str]]]:
    """block index -> layer index -> the parameter names under ``group.block.layer.``."""
    found: dict[int, dict[int, set[str]]] = {}
    for key in state:
        match = re.fullmatch(rf"{group}\.(\d+)\.(\d+)\.(.+)", key)
        if match:
            found.setdefault(int(match[1]), {}).setdefault(int(match[2]), set()).add(match[3])
    return found


def _kind(names: set[str]) -> str:
    if any(n.startswith("in_layers.") for n in names):
        return "res"
    if any(n.startswith("qkv.") for n in names):
        return "attn"
    if any(n.startswith(("op.", "conv.")) for n in names):
        return "resample"
    return "other"


def infer_shape(state: dict[str, Tensor], src: Path, resolution: int | None) -> ADMShape:
    """ADM's constructor arguments from the keys and shapes of its state dict."""
    if resolution is None:
        raise ConvertError(f"{src}: an ADM checkpoint does not record its image size; pass --resolution N (the "
                           "model's --image_size, e.g. 32, 64, 128 or 256)")
    conv_in = state["input_blocks.0.0.weight"]  # (channel_mult[0] * model_channels, in_channels, 3, 3)
    model_channels = int(state["time_embed.0.weight"].shape[1])  # the sinusoidal features' width
    in_channels = int(conv_in.shape[1])
    if conv_in.shape[0] != model_channels:
        raise ConvertError(f"{src}: the input conv has {conv_in.shape[0]} channels, not model_channels = "
                           f"{model_channels}: guided-diffusion with channel_mult[0] != 1, which diffaug's UNet "
                           "(improved-diffusion's input conv) does not build")
    encoder, decoder = _modules(state, "input_blocks"), _modules(state, "output_blocks")
    n_in = max(encoder) + 1
    if sorted(encoder) != list(range(n_in)) or sorted(decoder) != list(range(len(decoder))):
        missing = sorted(set(range(n_in)) - set(encoder))
        raise ConvertError(
            f"{src}: input_blocks {missing} hold no weights: a model trained with conv_resample=False (average "
            "pool / nearest resampling without a conv), which diffaug's UNet does not build; only conv "
            "resampling (the projects' default) and resblock_updown convert")
    # A decoder block ends in an up-sampler (an Upsample conv, or a second ResBlock with resblock_updown) at
    # the last block of every level but the lowest: that position gives num_res_blocks and the level count.
    ups = [i for i, layers in sorted(decoder.items())
           if any(j > 0 and _kind(names) in ("resample", "res") for j, names in layers.items())]
    num_res_blocks = ups[0] if ups else len(decoder) - 1
    levels = len(decoder) // (num_res_blocks + 1)
    expected_ups = [(level + 1) * (num_res_blocks + 1) - 1 for level in range(levels - 1)]
    if num_res_blocks < 1 or levels * (num_res_blocks + 1) != len(decoder) or ups != expected_ups \
            or n_in != levels * (num_res_blocks + 1):
        raise ConvertError(f"{src}: {n_in} input and {len(decoder)} output blocks with up-samplers at {ups} are not "
                           "an ADM UNet (levels x (num_res_blocks + 1) blocks on each side)")
    downs = [(level + 1) * (num_res_blocks + 1) for level in range(levels - 1)]
    down_kinds = {_kind(encoder[i][0]) for i in downs}
    up_kinds = {_kind(decoder[i][max(decoder[i])]) for i in ups}
    if len(down_kinds | up_kinds) > 1:
        raise ConvertError(f"{src}: down-samplers are {sorted(down_kinds)} but up-samplers {sorted(up_kinds)}; "
                           "ADM uses residual blocks for both (resblock_updown) or convs for both")
    channel_mult, attention_levels = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)  # the level's first residual block
        width = int(state[f"input_blocks.{first}.0.in_layers.2.weight"].shape[0])
        if width % model_channels:
            raise ConvertError(f"{src}: level {level} has {width} channels, not a multiple of {model_channels}")
        channel_mult.append(width // model_channels)
        if 1 in encoder[first] and _kind(encoder[first][1]) == "attn":
            attention_levels.append(level)
    skip = [k for k, v in state.items() if k.endswith("skip_connection.weight") and v.shape[-1] != 1]
    if skip:
        raise ConvertError(f"{src}: {skip[0]} is a 3x3 conv (use_conv=True skips); diffaug's UNet has 1x1 skips")
    if model_channels % NORM_GROUPS:
        raise ConvertError(f"{src}: {model_channels} base channels do not split into ADM's {NORM_GROUPS} "
                           "GroupNorm groups; is it another network?")
    factor = 2 ** (levels - 1)
    if resolution < factor or resolution % factor:
        raise ConvertError(f"{src}: resolution {resolution} is not a multiple of 2**{levels - 1} = {factor}, which "
                           f"the model's {levels - 1} down-sampling steps need; pass --resolution "
                           f"{max(factor, round(resolution / factor) * factor)} (or another multiple of {factor})")
    emb_rows = int(state["input_blocks.1.0.emb_layers.1.weight"].shape[0])
    return ADMShape(
        in_channels=in_channels, out_channels=int(state["out.2.weight"].shape[0]), model_channels=model_channels,
        channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks, attention_levels=tuple(attention_levels),
        use_scale_shift_norm=emb_rows == 2 * channel_mult[0] * model_channels,
        resblock_updown=down_kinds == {"res"} if downs else False,
        num_classes=int(state["label_emb.weight"].shape[0]) if "label_emb.weight" in state else 0,
        resolution=resolution,
    )


def rename(key: str) -> str | None:
    """diffaug's name for an ADM key (the qkv layout is changed separately), or None."""
    for source, target in TOP.items():
        if key.startswith(source + ".") and key.count(".") == source.count(".") + 1:
            return target + key[len(source):]
    match = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)", key) \
        or re.fullmatch(r"(middle_block)\.()(\d+)\.(.+)", key)
    if not match:
        return None
    group, block, layer, rest = match.groups()
    prefix = ".".join(p for p in (BLOCKS[group], block, layer) if p)
    if group == "input_blocks" and block == "0":  # the input conv
        return f"{prefix}.{rest}" if rest in ("weight", "bias") else None
    param = rest.rsplit(".", 1)
    if len(param) != 2 or param[1] not in ("weight", "bias"):
        return None
    for table in (RESBLOCK, ATTENTION, RESAMPLE):
        if param[0] in table:
            return f"{prefix}.{table[param[0]]}.{param[1]}"
    return None


def _heads(width: int, options: ConvertOptions, src: Path) -> int:
    if options.head_channels is not None:
        if width % options.head_channels:
            raise ConvertError(f"{src}: --head-channels {options.head_channels} does not divide the attention "
                               f"width {width}")
        return width // options.head_channels
    heads = options.num_heads or DEFAULT_HEADS
    if width % heads:
        raise ConvertError(f"{src}: {heads} heads do not divide the attention width {width}; pass --num-heads or "
                           "--head-channels as the model was trained")
    return heads


def to_diffaug_qkv(tensor: Tensor, heads: int, order: str) -> Tensor:
    """A Conv1d qkv weight (3C, C, 1) or bias (3C,) in ADM's order -> a Linear's rows in (3, heads, d) order."""
    if tensor.ndim == 3:
        tensor = tensor[..., 0]  # a 1x1 Conv1d is a Linear
    if order == "new":  # QKVAttention: split into q, k, v first, then heads - already (3, heads, d)
        return tensor.contiguous()
    rest = tensor.shape[1:]
    d = tensor.shape[0] // (3 * heads)
    # QKVAttentionLegacy: heads first, each holding its own (q, k, v) rows.
    return tensor.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(3 * heads * d, *rest).contiguous()


def diffaug_config(shape: ADMShape, options: ConvertOptions, heads: dict, name: str) -> dict:
    args = {"model_channels": shape.model_channels, "channel_mult": list(shape.channel_mult),
            "num_res_blocks": shape.num_res_blocks, "attention_resolutions": list(shape.attention_resolutions),
            **heads, "use_scale_shift_norm": shape.use_scale_shift_norm,
            "resblock_updown": shape.resblock_updown, "norm_groups": NORM_GROUPS}
    process_args = {"num_timesteps": options.diffusion_steps, "schedule": options.noise_schedule,
                    "rescale_timesteps": options.rescale_timesteps}
    cfg = load_config([], [f"name={name}", "model.net=unet", f"data.channels={shape.in_channels}",
                           f"data.resolution={shape.resolution}", "objective.process=ddpm",
                           "objective.prediction=eps",
                           # pixel models: image_sample.py clips x0 to [-1, 1] (clip_denoised=True)
                           "sampling.clip_x0=true"])
    data = to_dict(cfg)
    data["model"]["args"] = args
    data["objective"]["process_args"] = process_args
    return data


@dataclass
class Converted:
    """An ADM state dict in diffaug's names and layout, with the config that builds its network."""

    net_state: dict[str, Tensor]
    config: dict
    shape: ADMShape
    class_names: tuple[str, ...]
    dropped: list[str]
    notes: list[str]


def _check_options(src: Path, options: ConvertOptions) -> None:
    if options.keep_sigma:
        raise ConvertError(f"{src}: diffaug's UNet predicts eps only, so learned-sigma outputs cannot be kept; "
                           "drop --keep-sigma (they are sliced off)")
    if options.num_heads is not None and options.head_channels is not None:
        raise ConvertError("give --num-heads or --head-channels, not both (guided-diffusion's num_head_channels "
                           "overrides num_heads)")
    if options.attention_order not in ("legacy", "new"):
        raise ConvertError(f"attention order {options.attention_order!r} is unknown; valid: legacy, new")


def convert_state(state: dict[str, Tensor], src: Path, options: ConvertOptions = ConvertOptions(),
                  progress: bool = False) -> Converted:
    """The conversion itself, file-free (the tests run it on meta tensors at full size)."""
    _check_options(src, options)
    if any(k.startswith(("encoder_", "transformer")) for k in state):
        raise ConvertError(f"{src} is a text-conditioned model (GLIDE-style encoder keys), not a class UNet")
    unknown = sorted(k for k in state if rename(k) is None and k != "label_emb.weight")
    if unknown:
        raise ConvertError(f"{src}: keys {unknown[:5]} are not an ADM UNet's; is it another network (a "
                           "classifier, a super-resolution model)?")
    shape = infer_shape(state, src, options.resolution)
    if shape.in_channels != shape.out_channels and not shape.learn_sigma:
        raise ConvertError(f"{src}: {shape.in_channels} input but {shape.out_channels} output channels: a "
                           "super-resolution or other model, not a denoiser of its input")
    widths = {shape.model_channels * shape.channel_mult[level] for level in shape.attention_levels}
    widths.add(shape.model_channels * shape.channel_mult[-1])  # the middle block always attends
    heads_by_width = {width: _heads(width, options, src) for width in widths}
    heads = {"head_channels": options.head_channels} if options.head_channels else \
        {"num_heads": options.num_heads or DEFAULT_HEADS}

    net_state: dict[str, Tensor] = {}
    for key in progress_bar(sorted(state), desc="converting", unit="tensor", enabled=progress):
        value = state[key].float()
        if key == "label_emb.weight":  # + the null row for classifier-free guidance: the mean class
            net_state["cond.classes.table.weight"] = torch.cat([value, value.mean(0, keepdim=True)])
            continue
        target = rename(key)
        if target.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            value = to_diffaug_qkv(value, heads_by_width[value.shape[0] // 3], options.attention_order)
        elif target.endswith(("attn.proj.weight", "attn.proj.bias")) and value.ndim == 3:
            value = value[..., 0].contiguous()
        net_state[target] = value
    dropped, notes = [], []
    if shape.learn_sigma:
        c = shape.in_channels
        net_state["out.2.weight"], net_state["out.2.bias"] = (net_state["out.2.weight"][:c].contiguous(),
                                                              net_state["out.2.bias"][:c].contiguous())
        dropped.append("learned-sigma outputs (the variance half of out.2)")
    if options.num_heads is None and options.head_channels is None:
        notes.append(f"the head count is in no tensor: assumed {DEFAULT_HEADS} heads (the projects' default); "
                     "pass --num-heads or --head-channels if the model was trained otherwise")
    notes.append(f"assumed: {options.attention_order} attention order, DDPM with {options.diffusion_steps} "
                 f"{options.noise_schedule} steps, rescale_timesteps={options.rescale_timesteps} (not recorded "
                 "in the file; set them as in the model's DIFFUSION_FLAGS)")
    if shape.num_classes:
        notes.append("null class row (for guidance) = the mean class row; the model was not trained with class "
                     "dropout, so guide only after fine-tuning")
    # An unconditional model has diffaug's one unlabelled class ("all"), as a model trained on a folder without
    # sub-folders.
    names = class_names_for(shape.num_classes, options.class_names, src) if shape.num_classes else (UNLABELLED_NAME,)
    config = diffaug_config(shape, options, heads, name=src.stem)
    return Converted(net_state, config, shape, tuple(names), dropped, notes)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, options: ConvertOptions = ConvertOptions(),
            progress: bool = True) -> ConversionSummary:
    """Convert an improved-/guided-diffusion UNet ``.pt`` into ``out``; returns what was done."""
    src = Path(src)
    _check_options(src, options)  # before reading a large file
    state = load_torch_checkpoint(src, kind="improved-diffusion")
    if not isinstance(state, dict) or "input_blocks.0.0.weight" not in state:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ConvertError(f"{src} is not an improved-/guided-diffusion UNet state dict: expected time_embed.0.weight, "
                           f"input_blocks.0.0.weight, ..., found {keys}; for a DiT use `diffaug convert dit`")
    done = convert_state(state, src, options, progress=progress)
    return save_converted(done.net_state, done.config, src=src, out=out, layout=LAYOUT,
                          class_names=done.class_names, learn_sigma=done.shape.learn_sigma, sigma_kept=False,
                          dropped=done.dropped, notes=done.notes, kind="UNet")


CONVERTERS.add("improved-diffusion", convert)
