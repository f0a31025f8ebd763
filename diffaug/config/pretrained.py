"""``model.args.pretrained``: a diffusers folder turned into config keys once, at load.

The folder's config.json becomes explicit ``model.args`` (the architecture), its scheduler_config.json the
objective (ddpm process, its schedule, the prediction, x0 clipping), and the folder itself
``training.init_from`` (the weights fine-tuning starts from). What a run saves is therefore a config that
rebuilds the network without the folder: sampling and export of its checkpoints never read it.

Scheduler values apply where the config does not set the key; a value the config sets (in a file or on the
command line, even one equal to the schema's default) must agree with the scheduler, since the network was
trained with that noise and parameterisation.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


PRETRAINED_KEY = "pretrained"
# model.args that may differ from the folder's config.json and leave its weights usable as they are; any
# other key given beside pretrained must repeat the folder's value.
FREE_ARGS = ("dropout",)


def _fail(message: str) -> Exception:
    from diffaug.config.load import ConfigError  # load imports this module

    return ConfigError(message)


def _agree(key: str, current: Any, given: DictConfig | None, wanted: Any, source: str) -> Any:
    """The scheduler's value; one the config set itself must be the same."""
    is_set = given is None or OmegaConf.select(given, key, default=_UNSET) is not _UNSET
    if is_set and current != wanted:
        raise _fail(f"config key {key!r} is {current!r}, but {source} says {wanted!r} (the network was trained "
                    f"with it); remove {key} from the config or set it to {wanted!r}")
    return wanted


_UNSET = object()


def resolve_pretrained(cfg: DictConfig, given: DictConfig | None = None) -> DictConfig:
    """cfg with ``model.args.pretrained`` replaced by the folder's architecture, objective and init_from.

    ``given`` holds the keys the user's files and overrides set; without it every value counts as set."""
    args = OmegaConf.to_container(cfg.model.args, resolve=True)
    if PRETRAINED_KEY not in args:
        return cfg
    # Imported here: the networks pull in torch, which loading a config without a pretrained folder need not.
    from diffaug.nets.diffusers_unet import (NAME, UNET_CONFIG, PretrainedFolderError, read_scheduler,
                                             read_unet_config, scheduler_path)

    folder = str(args.pop(PRETRAINED_KEY))
    if cfg.model.net != NAME:
        raise _fail(f"model.args.pretrained is set but model.net is {cfg.model.net!r}; pretrained folders are "
                    f"read by model.net={NAME}")
    o = cfg.objective
    if o.process != "ddpm":
        raise _fail(f"objective.process is {o.process!r}, but diffusers UNets in {folder} were trained on "
                    "DDPM steps; set objective.process=ddpm")
    try:
        unet_config = read_unet_config(folder, channels=cfg.data.channels, resolution=cfg.data.resolution)
        scheduler = scheduler_path(folder)
        settings = read_scheduler(scheduler) if scheduler is not None else None
    except PretrainedFolderError as error:
        raise _fail(str(error)) from None
    changed = sorted(k for k, v in args.items() if k not in FREE_ARGS and unet_config.get(k) != v)
    if changed:
        raise _fail(f"model.args {changed} would change the architecture of the pretrained network in {folder} "
                    f"(its {UNET_CONFIG} says {({k: unet_config.get(k) for k in changed})}); remove them "
                    f"(beside model.args.pretrained only {', '.join(FREE_ARGS)} may differ)")
    objective: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    if settings is None:  # no scheduler file: the config's own DDPM chain, told to the network too
        steps = int(OmegaConf.to_container(o.process_args).get("num_timesteps", 1000))
    else:
        source = str(scheduler)
        given_args = OmegaConf.to_container(o.process_args, resolve=True)
        wanted = settings["process_args"]
        clash = {k: v for k, v in given_args.items() if k not in wanted or wanted[k] != v}
        if clash:
            raise _fail(f"objective.process_args {clash} disagree with {source}, which sets {wanted}; remove "
                        "objective.process_args")
        objective = {"process_args": wanted,
                     "prediction": _agree("objective.prediction", o.prediction, given,
                                          settings["prediction"], source)}
        sampling = {"clip_x0": _agree("sampling.clip_x0", cfg.sampling.clip_x0, given,
                                      settings["clip_x0"], source)}
        steps = wanted["num_timesteps"]
    model_args = {**unet_config, **args, "num_train_timesteps": steps}
    update = {"model": {"args": model_args}, "objective": objective, "sampling": sampling}
    if cfg.training.init_from is None:  # else a diffaug checkpoint of this network brings the weights
        update["training"] = {"init_from": folder}
    resolved = cfg.copy()
    resolved.model.args = {}  # replaced, not merged: pretrained goes
    return OmegaConf.merge(resolved, update)  # type: ignore[return-value]
