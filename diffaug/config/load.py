"""Load, merge, validate and save configs.

Order of precedence (later wins): schema defaults < YAML files (with their ``include`` lists) <
command-line ``key=value`` overrides. Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from diffaug.config.pretrained import resolve_pretrained
from diffaug.config.schema import Config
from diffaug.registry import did_you_mean

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INCLUDE_KEY = "include"


def bundled_configs() -> Traversable:
    """The YAML configs shipped with diffaug: the ``diffaug.configs`` package data of an installed copy (a wheel
    maps the repository's top-level configs/ there), else configs/ beside the package in a source checkout."""
    try:
        return resources.files("diffaug.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "configs"


CONFIGS_DIR = bundled_configs()


class ConfigError(ValueError):
    """A config that cannot be used, with a message that says how to fix it."""


# ---------------------------------------------------------------- YAML files


def _find_file(name: str | Path, relative_to: Path | None) -> Path:
    """A config path as given, relative to the including file, or relative to the configs/ folder."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates.append(Path(CONFIGS_DIR.joinpath(str(name))))
    for path in candidates:
        if path.is_file():
            return path
        if path.suffix == "" and path.with_suffix(".yaml").is_file():
            return path.with_suffix(".yaml")
    tried = ", ".join(str(p) for p in candidates)
    raise ConfigError(f"config file {str(name)!r} not found (looked at: {tried})")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: where, what, and the construct it was inside."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    problem = getattr(err, "problem", None)
    if problem is None:
        return " ".join(str(err).split())
    text = f"{at(getattr(err, 'problem_mark', None))}: {problem}".lstrip(": ")
    context = getattr(err, "context", None)
    if context:
        text += f" ({context} from {at(getattr(err, 'context_mark', None))})".replace(" from )", ")")
    return text


def read_yaml(name: str | Path, relative_to: Path | None = None, _stack: tuple[Path, ...] = ()) -> dict:
    """Read one YAML file with its ``include`` list merged underneath it (includes first, file last)."""
    path = _find_file(name, relative_to).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"config files include each other in a cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    includes = data.pop(INCLUDE_KEY, []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: Any = OmegaConf.create({})
    for included in includes:
        merged = OmegaConf.merge(merged, read_yaml(included, path.parent, (*_stack, path)))
    merged = OmegaConf.merge(merged, data)
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


# ---------------------------------------------------------------- merging with the schema


def _valid_keys(node: Any) -> list[str]:
    try:
        return sorted(str(k) for k in node.keys())
    except Exception:  # not a mapping
        return []


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = err.full_key or getattr(err, "key", None) or "?"
    if isinstance(err, ConfigKeyError):
        bad = str(getattr(err, "key", key)).split(".")[-1]
        valid = _valid_keys(err.parent_node)
        parent = str(key).rsplit(".", 1)[0] if "." in str(key) else "the top level"
        return ConfigError(
            f"unknown config key {key!r} (from {source}); valid keys under {parent}: "
            f"{', '.join(valid)}.{did_you_mean(bad, valid)}"
        )
    message = str(err).split("\n")[0]
    if isinstance(err, ValidationError) and "expected one of" in message:
        choices = message.split("expected one of", 1)[1].strip(" []").replace("'", "").split(", ")
        value = str(getattr(err, "value", ""))
        message += did_you_mean(value, choices)
    return ConfigError(f"invalid value for config key {key!r} (from {source}): {message}")


def _scalars_to_lists(cfg: DictConfig, update: Any) -> Any:
    """A single string where the schema wants a list of them becomes a one-item list.

    ``eval.downstream.synthetic=runs/x/export`` on a command line, and configs saved before a key became a
    list, then load instead of failing with OmegaConf's "AnyNode is not a ListConfig".
    """
    if isinstance(update, DictConfig):
        update = OmegaConf.to_container(update, resolve=False)  # keeps ${...} for the merge to resolve
    if not isinstance(update, dict):
        return update
    out = {}
    for key, value in update.items():
        node = cfg._get_node(key) if isinstance(cfg, DictConfig) and key in cfg else None
        if isinstance(node, DictConfig):
            value = _scalars_to_lists(node, value)
        elif isinstance(node, ListConfig) and isinstance(value, str):
            value = [value]
        out[key] = value
    return out


def _merge(cfg: DictConfig, update: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, _scalars_to_lists(cfg, update))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key=value, e.g. training.max_steps=500")
    return OmegaConf.from_dotlist(overrides)


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> DictConfig:
    """Schema defaults, then each YAML file in order, then ``key=value`` overrides; validated."""
    cfg: DictConfig = OmegaConf.structured(Config)
    given = OmegaConf.create()  # what the files and the command line set, without the schema's defaults
    for name in files:
        data = read_yaml(name)
        cfg = _merge(cfg, data, str(name))
        given = OmegaConf.merge(given, data)
    command_line = parse_overrides(overrides)
    cfg = _merge(cfg, command_line, "the command line")
    given = OmegaConf.merge(given, command_line)
    _check_interpolations(cfg)
    cfg = resolve_pretrained(cfg, given)  # a pretrained folder's architecture and objective, as config keys
    validate(cfg)
    return cfg


def _check_interpolations(cfg: DictConfig) -> None:
    """Resolve every ``${...}`` once now, so a dangling one fails at load naming its key, not mid-run."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"config key {key!r}: {str(err).splitlines()[0]}") from None


def config_from_dict(data: dict) -> DictConfig:
    """A config saved with a run or a checkpoint, checked against today's schema."""
    cfg = _merge(OmegaConf.structured(Config), data, "the saved config")
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- checks the schema cannot express


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for config key {key!r}: {value!r}; {rule}")


GUIDANCE_RANGE = "must be a finite number >= 0 (0: unconditional, 1: no guidance, above 1: stronger guidance)"


def _scale_ok(scale: float) -> bool:
    return math.isfinite(scale) and scale >= 0


def validate(cfg: DictConfig) -> None:
    d, t, s, e = cfg.data, cfg.training, cfg.sampling, cfg.export
    _require(d.resolution >= 4, "data.resolution", d.resolution, "must be at least 4")
    _require(1 <= d.channels <= 4, "data.channels", d.channels, "must be 1, 3 or 4 (grey, RGB, RGBA)")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be at least 1")
    _require(d.num_workers is None or d.num_workers >= 0, "data.num_workers", d.num_workers,
             "must be 0 or more (or null: chosen from the CPUs of the job)")
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "must be in [0, 1)")
    _require(d.per_class_limit is None or d.per_class_limit >= 1, "data.per_class_limit",
             d.per_class_limit, "must be at least 1 (or null for all images)")
    _require(d.holdout_per_class is None or d.holdout_per_class >= 1, "data.holdout_per_class",
             d.holdout_per_class, "must be at least 1 (or null for no holdout)")
    _require(0.0 <= cfg.objective.label_dropout < 1.0, "objective.label_dropout",
             cfg.objective.label_dropout, "must be in [0, 1)")
    _require(t.max_steps >= 1, "training.max_steps", t.max_steps, "must be at least 1")
    _require(t.lr > 0, "training.lr", t.lr, "must be positive")
    _require(t.warmup_steps >= 0, "training.warmup_steps", t.warmup_steps, "must be 0 or more")
    _require(t.accumulate_grad_batches >= 1, "training.accumulate_grad_batches",
             t.accumulate_grad_batches, "must be at least 1")
    _require(t.ema_halflife_kimg >= 0, "training.ema_halflife_kimg", t.ema_halflife_kimg, "must be 0 or more")
    _require(t.lora_rank >= 0, "training.lora_rank", t.lora_rank, "must be 0 (off) or more")
    class_init = OmegaConf.to_container(t.class_init)
    _require(t.init_from is not None or (not class_init and t.new_class_rows == "fresh"), "training.class_init",
             class_init or t.new_class_rows, "starts new classes from rows of a pretrained model: set training.init_from")
    if d.class_names is not None:
        unknown = sorted(set(class_init) - set(d.class_names))
        _require(not unknown, "training.class_init", unknown, f"keys are classes of the data; valid names: "
                 f"{', '.join(d.class_names)}.{did_you_mean(str(unknown[0]), list(d.class_names)) if unknown else ''}")
    _require(s.steps >= 1, "sampling.steps", s.steps, "must be at least 1")
    _require(s.batch_size >= 1, "sampling.batch_size", s.batch_size, "must be at least 1")
    _require(s.microbatch >= 1, "sampling.microbatch", s.microbatch, "must be at least 1")
    _require(_scale_ok(s.guidance_scale), "sampling.guidance_scale", s.guidance_scale, GUIDANCE_RANGE)
    bad_scales = {name: scale for name, scale in s.class_guidance.items() if not _scale_ok(scale)}
    _require(not bad_scales, "sampling.class_guidance", bad_scales, f"every scale {GUIDANCE_RANGE}")
    rg = s.random_guidance
    _require(rg is None or (len(rg) == 2 and _scale_ok(rg[0]) and _scale_ok(rg[1]) and rg[0] <= rg[1]),
             "sampling.random_guidance", None if rg is None else list(rg),
             f"must be [lo, hi] with lo <= hi, each {GUIDANCE_RANGE.removeprefix('must be ')}; or null")
    _require(rg is None or not s.class_guidance, "sampling.random_guidance", list(rg or []),
             "cannot be combined with sampling.class_guidance; set one of them")
    gi = s.guidance_interval
    _require(gi is None or (len(gi) == 2 and 0 <= gi[0] < gi[1]), "sampling.guidance_interval",
             None if gi is None else list(gi), "must be [lo, hi] with 0 <= lo < hi (EDM sigma), or null")
    _require(e.shard_size >= 1, "export.shard_size", e.shard_size, "must be at least 1")
    _require(0.0 <= e.min_confidence <= 1.0, "export.min_confidence", e.min_confidence, "must be in [0, 1]")
    _require(e.dedup_threshold is None or e.dedup_threshold >= 0, "export.dedup_threshold",
             e.dedup_threshold, "must be 0 or more (or null for no near-duplicate check)")
    _require(0.0 < e.strength <= 1.0, "export.strength", e.strength, "must be in (0, 1]")
    bad_formats = sorted(set(e.formats) - {"folder", "shards"})
    _require(not bad_formats and len(e.formats) > 0, "export.formats", list(e.formats),
             "choose one or both of: folder, shards")
    for entry in cfg.eval.downstream.synthetic:
        union = list(entry) if isinstance(entry, ListConfig) else None
        _require(isinstance(entry, str) or (union is not None and len(union) >= 2 and len(set(union)) == len(union)
                                            and all(isinstance(p, str) for p in union)),
                 "eval.downstream.synthetic", union if union is not None else entry,
                 "each entry must be a set's path pattern, or a list of two or more different ones (one candidate: "
                 "their union), e.g. ['runs/k{k}-s{seed}/export', ['runs/k{k}-s{seed}/export', "
                 "'runs/k{k}-s{seed}/export-sde70']]")
    _check_registry_names(cfg)
    if cfg.model.autoencoder is not None:
        _check_latents(cfg)
    if t.trainer_args:  # imports Lightning, which a config without them need not
        from diffaug.config.trainer_args import check_trainer_args

        check_trainer_args(OmegaConf.to_container(t.trainer_args))


def _check_name(key: str, value: str, names: list[str]) -> None:
    if value not in names:
        raise ConfigError(f"invalid value for config key {key!r}: {value!r}; valid names: {', '.join(names)}."
                          f"{did_you_mean(value, names)}")


def _check_options(key: str, check: Callable[[], None]) -> None:
    try:
        check()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid value for config key {key!r}: {err}") from None


def _check_registry_names(cfg: DictConfig) -> None:
    """Names of registered components against their registries, the one list of valid names (a component
    registered from a new module is valid here once that module is imported), and their options."""
    # Imported here: the registries pull in torch and the networks, which config loading alone need not.
    from diffaug.data import SOURCES, source_needs_path
    from diffaug.diffusion import PROCESSES, SAMPLERS, WEIGHTINGS, check_objective_options
    from diffaug.diffusion import check_sampler_options
    from diffaug.nets import NETS

    d, o, s = cfg.data, cfg.objective, cfg.sampling
    for key, registry, value in (("data.source", SOURCES, d.source), ("model.net", NETS, cfg.model.net),
                                 ("objective.process", PROCESSES, o.process),
                                 ("sampling.sampler", SAMPLERS, s.sampler)):
        _check_name(key, value, registry.names())
    _require(d.path is not None or not source_needs_path(d.source), "data.path", d.path,
             f"data.source={d.source} needs data.path")
    if o.weighting is not None:
        _check_name("objective.weighting", o.weighting, list(WEIGHTINGS))
    weighting = PROCESSES.get(o.process).default_weighting if o.weighting is None else o.weighting
    _check_options("objective.args",
                   lambda: check_objective_options(weighting, OmegaConf.to_container(o.args)))
    _check_options("sampling.sampler_args",
                   lambda: check_sampler_options(s.sampler, OmegaConf.to_container(s.sampler_args)))


def _check_latents(cfg: DictConfig) -> None:
    """A latent model: the autoencoder folder is one, the data fits it, and the denoiser fits its latents."""
    import torch

    from diffaug.nets import build_net
    from diffaug.nets.autoencoder import AutoencoderError, check_channel_mapping, read_spec

    m, d = cfg.model, cfg.data
    try:
        spec = read_spec(m.autoencoder)
        check_channel_mapping(spec, int(d.channels), m.autoencoder_channels)
    except AutoencoderError as error:
        if m.autoencoder_sha256 and not (Path(m.autoencoder) / "config.json").is_file():
            # A trained model's config: the folder it recorded has moved or gone, and another place may hold it.
            raise ConfigError(
                f"model.autoencoder={m.autoencoder} (the folder this model was trained with) is gone or not an "
                "autoencoder folder; if it moved, pass model.autoencoder=<its folder now> (checked by content "
                f"hash, {m.autoencoder_sha256[:12]})") from None
        raise ConfigError(str(error)) from None
    f = spec.downsample
    _require(d.resolution % f == 0, "data.resolution", d.resolution,
             f"the autoencoder downsamples by {f}: use a multiple of {f} (e.g. {max(f, d.resolution // f * f)})")
    latent = spec.latent_shape(int(d.resolution))
    wanted = {"in_channels": latent[0], "resolution": latent[1]}
    for key, value in wanted.items():
        given = m.args.get(key)
        _require(given is None or given == value, f"model.args.{key}", given,
                 f"the autoencoder's latents are {latent} (channels, height, width) at data.resolution="
                 f"{d.resolution}; remove model.args.{key} (it is set from the latents) or set it to {value}")
    args = {k: v for k, v in OmegaConf.to_container(m.args).items() if k not in wanted}
    try:
        with torch.device("meta"):  # the network's own checks, without allocating its weights
            build_net(m.net, **wanted, **args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.net={m.net} does not fit the latents {latent} of model.autoencoder at "
                          f"data.resolution={d.resolution}: {str(error).splitlines()[0]}; change model.args "
                          "(e.g. patch_size) or data.resolution") from None
    _require(not m.latent_cache or d.source != "shards", "model.latent_cache", True,
             "the cache reads map-style sources (folder, idx, sklearn_digits); streamed shards are encoded "
             "on the fly: set model.latent_cache=false")


# ---------------------------------------------------------------- saving and identity


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def config_hash(cfg: DictConfig | dict) -> str:
    """SHA-256 of the resolved config in canonical JSON: two runs with equal hashes had equal settings."""
    data = to_dict(cfg) if isinstance(cfg, DictConfig) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
