"""A diffusers ``UNet2DModel`` as a diffaug network, wrapped (not converted), and the files of its folder.

``DiffusersUNet2D`` calls the diffusers module itself, so a public pretrained UNet (google/ddpm-cifar10-32 and
the like, saved with ``save_pretrained``) fine-tunes with exactly the forward it was trained with. Its
architecture is the ``UNet2DModel`` config, given as explicit keyword arguments: the config reads them from the
folder's config.json once (``diffaug.config.pretrained``), so a checkpoint carries them and rebuilds without the
folder. Loading the folder's weights is fine-tuning's job (``training.init_from``): :func:`folder_state`.

Time: diffaug hands every network ``noise_level = 1000 t / N`` (``GaussianProcess.noise_level``; for DDPM t is
the step index of an N-step chain). diffusers UNets were trained on the step index itself, so the wrapper
passes ``noise_level * N / 1000`` with N = num_train_timesteps, the scheduler's.

diffusers is an optional dependency (``pip install diffaug[diffusers]``), imported only when such a network is
built or a folder read; this module's JSON readers need nothing but the standard library.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffaug.nets.checks import check_class_labels, check_image_batch, check_noise_level
from diffaug.nets.presets import NETS

NAME = "diffusers-unet2d"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
# Keys of a UNet2DModel config that diffaug sets from the data (and the class count), never from model.args.
DATA_KEYS = ("in_channels", "sample_size", "num_class_embeds")
# Bookkeeping keys of a diffusers config file, not constructor arguments.
FILE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def _unet2d_model() -> type[nn.Module]:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ImportError(
            f"model.net={NAME} needs the diffusers package; install it with pip install 'diffaug[diffusers]'"
        ) from None
    return UNet2DModel


def _set_attention_backend(unet: nn.Module, backend: str) -> None:
    """diffusers' own attention processors: "sdpa" is its default (AttnProcessor2_0)."""
    if backend == "sdpa":
        return
    from diffusers.models.attention_processor import Attention, AttnProcessor, XFormersAttnProcessor

    processors = {"math": AttnProcessor, "xformers": XFormersAttnProcessor}
    if backend not in processors:
        raise ValueError(f"unknown attn_backend {backend!r}; choose one of sdpa, {', '.join(processors)}")
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processors[backend]())


class DiffusersUNet2D(nn.Module):
    """``net(x (N, C, H, W), noise_level (N,), class_labels (N,) | None) -> (N, C, H, W)`` around
    ``self.unet``, a diffusers ``UNet2DModel`` built from ``unet_config`` (its constructor's keyword arguments).

    Class-conditional (num_classes > 0): the UNet's ``class_embedding`` table has num_classes + 1 rows, the
    last the null class. Only ``positional`` time embeddings and a plain class table (``class_embed_type``
    None) fit diffaug's interface. An out_channels of 2 C (a learned variance) is read as its first C
    channels: diffaug's samplers use fixed variances.
    """

    class_table = "unet.class_embedding.weight"
    # The query, key, value and output projections of diffusers' Attention modules (in attentions.N).
    lora_targets = (r"(^|\.)attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)$",)

    def __init__(
        self,
        *,
        in_channels: int = 3,
        resolution: int = 32,
        num_classes: int | None = None,
        attn_backend: str = "sdpa",
        grad_checkpointing: bool = False,
        num_train_timesteps: int = 1000,
        **unet_config: Any,
    ):
        super().__init__()
        unet_class = _unet2d_model()
        valid = set(inspect.signature(unet_class.__init__).parameters) - {"self"}
        unknown = sorted(set(unet_config) - valid)
        if unknown:
            raise TypeError(f"UNet2DModel has no argument(s) {unknown} (model.args); valid arguments: "
                            f"{', '.join(sorted(valid - set(DATA_KEYS)))}")
        from_data = sorted(set(unet_config) & set(DATA_KEYS))
        if from_data:
            raise ValueError(f"model.args {from_data} are set from the data (data.channels, data.resolution and "
                             "its classes); remove them from model.args")
        if unet_config.get("time_embedding_type", "positional") != "positional":
            raise ValueError(f"time_embedding_type={unet_config['time_embedding_type']!r} is not supported: "
                             "diffaug conditions on a DDPM-style step (positional embeddings only)")
        if unet_config.get("class_embed_type") is not None:
            raise ValueError(f"class_embed_type={unet_config['class_embed_type']!r} is not supported: diffaug's "
                             "labels need a class table (class_embed_type null)")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
        out_channels = unet_config.get("out_channels", in_channels)
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"out_channels={out_channels} must equal in_channels={in_channels} (or twice it, "
                             "a learned variance, whose extra channels are ignored)")
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes or 0
        self.num_train_timesteps = num_train_timesteps
        self.unet = unet_class(
            **{**unet_config, "out_channels": out_channels, "num_train_timesteps": num_train_timesteps},
            in_channels=in_channels,
            sample_size=resolution,
            num_class_embeds=self.num_classes + 1 if self.num_classes else None,
        )
        _set_attention_backend(self.unet, attn_backend)
        if grad_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def timestep(self, noise_level: Tensor) -> Tensor:
        """The diffusers step index for diffaug's noise level in [0, 1000] (float: between-step times too)."""
        return noise_level.float() * (self.num_train_timesteps / 1000)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        check_image_batch(x, channels=self.in_channels, resolution=self.resolution, net_name=NAME)
        check_noise_level(noise_level, x.shape[0])
        if self.num_classes:
            check_class_labels(class_labels, x.shape[0], self.num_classes)
        else:
            class_labels = None
        out = self.unet(x, self.timestep(noise_level), class_labels, return_dict=False)[0]
        return out[:, : self.in_channels]  # (N, C, H, W)


NETS.add(NAME, DiffusersUNet2D)


# ---------------------------------------------------------------- a pretrained folder


class PretrainedFolderError(ValueError):
    """A diffusers folder diffaug cannot fine-tune, with the file, the key and the fix."""


def unet_folder(folder: str | Path) -> Path:
    """The folder holding the UNet's config.json: the folder itself, or its unet/ (a pipeline's layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedFolderError(f"model.args.pretrained: {folder} is not a folder; give the local folder "
                                    "written by UNet2DModel.save_pretrained (or a pipeline's, with unet/)")
    for candidate in (folder, folder / "unet"):
        if (candidate / UNET_CONFIG).is_file():
            return candidate
    raise PretrainedFolderError(f"model.args.pretrained: {folder} has no {UNET_CONFIG} (nor unet/{UNET_CONFIG}); "
                                "give the folder written by UNet2DModel.save_pretrained")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PretrainedFolderError(f"{path} is not readable JSON ({error}); copy the folder again") from None
    if not isinstance(data, dict):
        raise PretrainedFolderError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_unet_config(folder: str | Path, *, channels: int, resolution: int) -> dict[str, Any]:
    """The folder's UNet2DModel config as this network's keyword arguments, checked against the data.

    The keys diffaug sets itself are left out: in_channels and sample_size (checked here), num_class_embeds
    (the table is sized for the data's classes when the weights load, :func:`folder_state`) and
    num_train_timesteps (the scheduler's).
    """
    path = unet_folder(folder) / UNET_CONFIG
    config = _read_json(path)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise PretrainedFolderError(f"{path}: _class_name is {config['_class_name']!r}; model.net={NAME} reads "
                                    "UNet2DModel folders only (text-conditioned UNet2DConditionModel is not one)")
    if config.get("in_channels", 3) != channels:
        raise PretrainedFolderError(f"{path}: in_channels is {config.get('in_channels', 3)} but data.channels is "
                                    f"{channels}; the network never saw such inputs: set data.channels="
                                    f"{config.get('in_channels', 3)}")
    size = config.get("sample_size")
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if sizes != (resolution, resolution):
        raise PretrainedFolderError(f"{path}: sample_size is {size} but data.resolution is {resolution}; the "
                                    f"network never saw such inputs: set data.resolution={sizes[0]}")
    if config.get("class_embed_type") is not None:
        raise PretrainedFolderError(f"{path}: class_embed_type is {config['class_embed_type']!r}; only a class "
                                    "table (class_embed_type null) maps onto diffaug's labels")
    if config.get("time_embedding_type", "positional") != "positional":
        raise PretrainedFolderError(f"{path}: time_embedding_type is {config['time_embedding_type']!r}; only "
                                    "positional (DDPM step) embeddings fit diffaug's noise level")
    drop = (*FILE_KEYS, *DATA_KEYS, "class_embed_type", "num_train_timesteps")
    return {key: value for key, value in config.items() if key not in drop}


# diffusers beta_schedule -> diffaug DDPM schedule; prediction_type -> diffaug prediction.
SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


def scheduler_path(folder: str | Path) -> Path | None:
    folder = Path(folder)
    for path in (folder / SCHEDULER_CONFIG, folder / "scheduler" / SCHEDULER_CONFIG):
        if path.is_file():
            return path
    return None


def read_scheduler(path: Path) -> dict[str, Any]:
    """A DDPM / DDIM scheduler config as diffaug settings: ``{"process_args": {...}, "prediction": ...,
    "clip_x0": ...}`` for objective.process=ddpm; schedules diffaug does not have are refused."""
    config = _read_json(path)
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise PretrainedFolderError(f"{path}: _class_name is {name!r}; diffaug maps only {', '.join(SCHEDULERS)} "
                                    "(a DDPM chain) onto its ddpm process; use a folder trained with one of them")

    def refuse(key: str, value: Any, allowed: str) -> PretrainedFolderError:
        return PretrainedFolderError(f"{path}: {key} is {value!r}, which diffaug's ddpm process does not have "
                                     f"({allowed}); this network cannot be fine-tuned with its own noise")

    if config.get("trained_betas") is not None:
        raise refuse("trained_betas", "a list", "only linear and squaredcos_cap_v2 schedules")
    if config.get("rescale_betas_zero_snr"):
        raise refuse("rescale_betas_zero_snr", True, "no zero-terminal-SNR rescaling")
    schedule = config.get("beta_schedule", "linear")
    if schedule not in SCHEDULES:
        raise refuse("beta_schedule", schedule, f"beta_schedule one of {', '.join(SCHEDULES)}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise refuse("prediction_type", prediction, f"prediction_type one of {', '.join(PREDICTIONS)}")
    clip = bool(config.get("clip_sample", True))
    if clip and float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise refuse("clip_sample_range", config["clip_sample_range"], "clipping to [-1, 1] only")
    steps = int(config.get("num_train_timesteps", 1000))
    process_args: dict[str, Any] = {"num_timesteps": steps, "schedule": SCHEDULES[schedule]}
    if schedule == "linear":
        # diffusers spaces betas over [beta_start, beta_end] whatever N; diffaug rescales its range by 1000 / N
        # (improved-diffusion), so the same chain is diffaug's with the range scaled by N / 1000.
        process_args["beta_start"] = float(config.get("beta_start", 1e-4)) * steps / 1000
        process_args["beta_end"] = float(config.get("beta_end", 0.02)) * steps / 1000
    return {"process_args": process_args, "prediction": PREDICTIONS[prediction], "clip_x0": clip}


# ---------------------------------------------------------------- loading the folder's weights


def _class_rows(pretrained: Tensor | None, own: Tensor, class_names: list[str]) -> tuple[Tensor, dict]:
    """The (K + 1, D) table for the data's K classes and the null class, from the folder's rows (or none).

    diffusers tables carry no class names: label i of the data takes row i of the folder. Every other row
    (new classes, and the null class, which diffusers models do not have) starts at the mean of the folder's
    rows, an embedding of the scale the network was trained with; an unconditional folder gives zero rows,
    so the model starts exactly as the pretrained one for every label.
    """
    if pretrained is None:
        return torch.zeros_like(own), {"kept": [], "initialised": list(class_names), "dropped": []}
    kept = min(pretrained.shape[0], len(class_names))
    table = pretrained.float().mean(0, keepdim=True).expand_as(own).clone().to(own.dtype)
    table[:kept] = pretrained[:kept].to(own.dtype)
    report = {"kept": list(class_names[:kept]), "initialised": list(class_names[kept:]),
              "dropped": [f"row {i}" for i in range(kept, pretrained.shape[0])]}
    return table, report


def folder_state(net: nn.Module, folder: str | Path, class_names: list[str]) -> tuple[dict[str, Tensor], dict]:
    """The folder's UNet weights as a state dict for ``net`` (a DiffusersUNet2D built from the folder's config),
    its class table sized for ``class_names``; and the class report (kept / initialised / dropped)."""
    if not isinstance(net, DiffusersUNet2D):
        raise PretrainedFolderError(f"{folder} is a folder, not a diffaug checkpoint; only model.net={NAME} "
                                    "starts from a diffusers folder (model.args.pretrained)")
    source = _unet2d_model().from_pretrained(str(unet_folder(folder)), local_files_only=True)
    state = {f"unet.{key}": value for key, value in source.state_dict().items()}
    own = net.state_dict()
    key = DiffusersUNet2D.class_table
    report = {"kept": list(class_names) if key in own else [], "initialised": [], "dropped": []}
    if key in own:
        state[key], report = _class_rows(state.get(key), own[key], class_names)
    elif key in state:  # a class-conditional folder fine-tuned unconditionally: its labels are not used
        rows = state.pop(key).shape[0]
        report["dropped"] = [f"row {i}" for i in range(rows)]
    return state, report
