"""What every converter shares: the summary, the error, the network shape a checkpoint implies, and writing
the result as diffaug's own ``model.safetensors``.

A converted file is indistinguishable from one written by training: the EMA-style denoiser weights (keys under
``net.``), the resolved config and the class names, checked by building the denoiser on the meta device and
comparing keys and shapes strictly, so ``training.init_from``, ``diffaug sample`` and export load it as they
load any diffaug model.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from diffaug.build import build_denoiser, conditional_num_classes
from diffaug.checkpoint import CheckpointError, load_state_strictly, save_weights
from diffaug.config import config_from_dict, load_config, to_dict
from diffaug.nets.dit import DIT_SIZES, sincos_2d_position_embedding
from diffaug.registry import Registry

Converter = Callable[..., "ConversionSummary"]
CONVERTERS: Registry[Converter] = Registry("checkpoint converter")
NET_PREFIX = "net."  # the denoiser's network, as in every diffaug state dict
POS_EMBED_TOLERANCE = 1e-4  # float32 rounding of the sin-cos table; a learned embedding differs far more


class ConvertError(CheckpointError):
    """A source checkpoint that cannot be converted: names the file, the reason and the fix."""


@dataclass(frozen=True)
class DiTShape:
    """The DiT hyperparameters a checkpoint implies (inferred from its keys and shapes)."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    in_channels: int
    out_channels: int
    num_classes: int
    mlp_ratio: float
    resolution: int

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels


@dataclass(frozen=True)
class ConvertOptions:
    """What a converter cannot read from the source, or what to do differently from the default."""

    resolution: int | None = None  # network input size; None: the checkpoint's own
    num_heads: int | None = None  # for a DiT .pt of none of the paper's sizes (no shape records it)
    class_names: Sequence[str] | str | os.PathLike | None = None  # names or a text file; None: ImageNet's / class_i
    keep_sigma: bool = False  # keep the learned-variance outputs instead of slicing them off
    # improved-/guided-diffusion UNets: what their plain state dicts do not record.
    head_channels: int | None = None  # guided-diffusion's num_head_channels (instead of num_heads)
    attention_order: str = "legacy"  # "new": guided-diffusion's use_new_attention_order
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    rescale_timesteps: bool = True  # improved-diffusion's default; the same as False at 1000 steps


@dataclass
class ConversionSummary:
    """What a conversion read and wrote; ``describe()`` is what ``diffaug convert`` prints."""

    source: str
    out: str
    layout: str
    parameters: int
    resolution: int
    in_channels: int
    classes: int
    learn_sigma: bool  # the source predicts a variance too (2x output channels)
    sigma_kept: bool
    net: str
    net_args: dict
    objective: dict  # the converted config's objective section (process, process_args, prediction, ...)
    clip_x0: bool
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def train_overrides(self) -> list[str]:
        """The ``key=value`` overrides a fine-tuning config needs so the network and its diffusion match this
        file."""
        return [f"model.net={self.net}", *([f"model.args={_flow(self.net_args)}"] if self.net_args else []),
                f"data.channels={self.in_channels}", f"data.resolution={self.resolution}",
                f"objective.process={self.objective['process']}",
                *([f"objective.process_args={_flow(self.objective['process_args'])}"]
                  if self.objective.get("process_args") else []),
                f"objective.prediction={self.objective['prediction']}",
                f"sampling.clip_x0={str(self.clip_x0).lower()}", f"training.init_from={self.out}"]

    def describe(self) -> str:
        sigma = ("kept (2x output channels)" if self.sigma_kept else "sliced off (eps only)") \
            if self.learn_sigma else "none"
        lines = [
            f"converted {self.source} ({self.layout}) -> {self.out}",
            f"  network:     {self.net} {self.net_args or ''}".rstrip(),
            f"  parameters:  {self.parameters:,}",
            f"  input:       {self.in_channels} x {self.resolution} x {self.resolution}",
            f"  classes:     {self.classes} (+ the null class for guidance)",
            f"  learn_sigma: {sigma}",
            f"  dropped:     {'; '.join(self.dropped) or 'nothing'}",
            *(f"  note:        {note}" for note in self.notes),
            f"  fine-tune with: {' '.join(shlex.quote(item) for item in self.train_overrides())}",
        ]
        if self.in_channels == 4:  # DiT's released models denoise Stable Diffusion VAE latents (8x smaller)
            lines.append(
                "  on images: a latent model; replace data.channels / data.resolution by model.autoencoder=<the "
                f"sd-vae-ft-ema/mse folder> data.channels=3 data.resolution={8 * self.resolution}"
            )
        return "\n".join(lines)


def _flow(mapping: dict) -> str:
    """A dict as one YAML flow mapping, the form an OmegaConf ``key={...}`` override parses."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)
    return "{" + ", ".join(f"{k}: {value(v)}" for k, v in mapping.items()) + "}"


# ---------------------------------------------------------------- shared pieces


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k classes in label order (sorted WordNet ids), each by its first WordNet lemma;
    the two repeated lemmas are told apart: "crane (bird)" / "crane (machine)", "maillot" / "maillot, tank
    suit" (timm's imagenet_synsets.txt and imagenet_synset_to_lemma.txt)."""
    text = resources.files("diffaug.convert").joinpath("imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


def class_names_for(num_classes: int, given: Sequence[str] | str | os.PathLike | None, src: Path
                    ) -> tuple[str, ...]:
    """``given`` (names, or a text file of one name a line), else ImageNet's for 1000 classes, else class_i."""
    if given is not None and not isinstance(given, (list, tuple)):
        given = [line.strip() for line in Path(given).read_text().splitlines() if line.strip()]
    if given is not None:
        if len(given) != num_classes:
            raise ConvertError(f"{src} has {num_classes} classes but {len(given)} class names were given; "
                               f"give one name per class, in label order")
        return tuple(given)
    if num_classes == 1000:
        return imagenet_class_names()
    return tuple(f"class_{i}" for i in range(num_classes))


def load_torch_checkpoint(src: Path, *, kind: str, allowed: Sequence[type] = (), holds: str = "tensors and "
                          "plain data") -> object:
    """torch.load with weights_only (tensors, plain data and the ``allowed`` classes): never code execution.

    ``kind`` names the checkpoint family in the errors ("DiT", "improved-diffusion"), ``holds`` what its
    files contain."""
    if not src.is_file():
        raise FileNotFoundError(f"{kind} checkpoint {src} does not exist")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(src, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(\. |\n|$)", str(error))
        raise ConvertError(
            f"refusing to load {src}: it holds Python objects other than {holds}, which could run code when "
            f"unpickled ({found.group(1) if found else 'unsupported global'}); {kind} checkpoints hold none: "
            "get the file from its original source"
        ) from None
    except Exception as error:  # noqa: BLE001 (truncation shows as EOF, zip or pickle-opcode errors)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConvertError(f"{src} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason}; "
                           "download it again") from None


def square_grid(tokens: int, src: Path) -> int:
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConvertError(f"{src}: pos_embed has {tokens} positions, not a square grid; DiT checkpoints "
                           "have (resolution / patch_size)**2 of them")
    return grid


def check_resolution(resolution: int, patch_size: int, src: Path) -> int:
    if resolution < patch_size or resolution % patch_size:
        nearest = max(patch_size, round(resolution / patch_size) * patch_size)
        raise ConvertError(f"{src}: resolution {resolution} is not a positive multiple of the model's patch "
                           f"size {patch_size}; pass --resolution {nearest} (or another multiple of "
                           f"{patch_size})")
    return resolution


def check_fixed_pos_embed(pos_embed: Tensor, hidden_size: int, grid: int, src: Path) -> None:
    """The stored table must be DiT's fixed sin-cos one: it is rebuilt from the config, never loaded."""
    expected = sincos_2d_position_embedding(hidden_size, grid)
    deviation = float((pos_embed.reshape(expected.shape).float() - expected).abs().max())
    if deviation > POS_EMBED_TOLERANCE:
        raise ConvertError(f"{src}: pos_embed differs from DiT's fixed 2-D sin-cos embedding by up to "
                           f"{deviation:.3g}, so it was trained or altered; a diffaug DiT rebuilds the fixed "
                           "table and cannot hold it")


def drop_sigma(weight: Tensor, bias: Tensor, patch_size: int, in_channels: int) -> tuple[Tensor, Tensor]:
    """The final linear's rows for the first ``in_channels`` output channels (eps), without the variance.

    Rows are ordered (p, q, c) as unpatchify reads them, so the channel is the fastest index."""
    p = patch_size
    weight = weight.reshape(p, p, -1, weight.shape[-1])[:, :, :in_channels].reshape(-1, weight.shape[-1])
    bias = bias.reshape(p, p, -1)[:, :, :in_channels].reshape(-1)
    return weight.contiguous(), bias.contiguous()


def preset_for(shape: DiTShape, keep_sigma: bool) -> tuple[str, dict]:
    """The registered preset with this shape and the args that differ from it, or dit-tiny with them all."""
    args: dict = {}
    if keep_sigma and shape.learn_sigma:
        args["learn_sigma"] = True
    if shape.mlp_ratio != 4.0:
        args["mlp_ratio"] = shape.mlp_ratio
    size = dict(depth=shape.depth, hidden_size=shape.hidden_size, num_heads=shape.num_heads)
    for name, dims in DIT_SIZES.items():
        if dims == size and shape.patch_size in (2, 4, 8):
            return f"dit-{name}-{shape.patch_size}", args
    return "dit-tiny", {"patch_size": shape.patch_size, **size, **args}


def heads_from_sizes(depth: int, hidden_size: int) -> int | None:
    """The paper's head count for a (depth, width) of its S/B/L/XL sizes, else None."""
    for dims in DIT_SIZES.values():
        if (dims["depth"], dims["hidden_size"]) == (depth, hidden_size):
            return dims["num_heads"]
    return None


def diffaug_config(shape: DiTShape, net: str, args: dict, name: str) -> dict:
    """The resolved config of the converted model: the network, and the DDPM it was trained with (linear
    betas 1e-4 .. 0.02 over 1000 steps, eps prediction, the step index as the network's noise level)."""
    arg_text = ", ".join(f"{k}: {v}" for k, v in args.items())
    cfg = load_config([], [
        f"name={name}", f"model.net={net}", f"model.args={{{arg_text}}}",
        f"data.channels={shape.in_channels}", f"data.resolution={shape.resolution}",
        "objective.process=ddpm", "objective.process_args={num_timesteps: 1000, schedule: linear}",
        "objective.prediction=eps",
        # DiT samples without clipping (clip_denoised=False): latents are not confined to [-1, 1].
        "sampling.clip_x0=false",
    ])
    return to_dict(cfg)


def write_converted(
    net_state: dict[str, Tensor],
    shape: DiTShape,
    *,
    src: Path,
    out: str | os.PathLike,
    layout: str,
    class_names: Sequence[str],
    keep_sigma: bool,
    dropped: list[str],
    notes: list[str],
) -> ConversionSummary:
    """A converted DiT: the preset its shape matches, its DDPM config, then ``save_converted``."""
    net, args = preset_for(shape, keep_sigma)
    return save_converted(
        net_state, diffaug_config(shape, net, args, name=src.stem), src=src, out=out, layout=layout,
        class_names=class_names, learn_sigma=shape.learn_sigma, sigma_kept=keep_sigma and shape.learn_sigma,
        dropped=dropped, notes=notes, kind="DiT")


def save_converted(
    net_state: dict[str, Tensor],
    config: dict,
    *,
    src: Path,
    out: str | os.PathLike,
    layout: str,
    class_names: Sequence[str],
    learn_sigma: bool,
    sigma_kept: bool,
    dropped: list[str],
    notes: list[str],
    kind: str,
) -> ConversionSummary:
    """Check ``net_state`` against the denoiser ``config`` builds (strictly, on the meta device) and save."""
    state = {NET_PREFIX + key: value for key, value in net_state.items()}
    with torch.device("meta"):  # keys and shapes only: no memory for a 675M-parameter network
        denoiser = build_denoiser(config_from_dict(config), conditional_num_classes(class_names))
    try:
        load_state_strictly(denoiser, {k: v.to("meta") for k, v in state.items()}, source=str(src))
    except CheckpointError as error:
        raise ConvertError(f"{src}: converted weights do not fit diffaug's {kind} ({error})") from None
    path = save_weights(out, state, config=config, class_names=list(class_names))
    return ConversionSummary(
        source=str(src), out=str(path), layout=layout, parameters=sum(v.numel() for v in state.values()),
        resolution=config["data"]["resolution"], in_channels=config["data"]["channels"], classes=len(class_names),
        learn_sigma=learn_sigma, sigma_kept=sigma_kept, net=config["model"]["net"],
        net_args=dict(config["model"]["args"]), objective=dict(config["objective"]),
        clip_x0=bool(config["sampling"]["clip_x0"]), dropped=dropped, notes=notes,
    )
