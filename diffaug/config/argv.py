"""Command lines of config files, checkpoints and key=value overrides, with options anywhere among them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffaug.config.load import ConfigError


def parse_items_anywhere(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that positional items (``args.items``) may follow options.

    argparse fills a ``nargs="*"`` positional from its first run of arguments only, so
    ``sample.py CKPT --grid g.png sampling.steps=25`` would fail with "unrecognized arguments:
    sampling.steps=25". ``parse_intermixed_args`` fixes that but refuses subcommands, which every diffaug
    command line but sample.py has; so the later runs are collected here, in order, and anything that looks
    like an option is still refused.
    """
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.items = [*(args.items or []), *extra]
    return args


def split_items(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(files, overrides): the items without "=" (config files, or a checkpoint), then the key=value ones, each
    in the order given."""
    return [item for item in items if "=" not in item], [item for item in items if "=" in item]


def checkpoint_and_overrides(items: Sequence[str]) -> tuple[str, list[str]]:
    """The one checkpoint among ``items`` and the key=value overrides (sample, export, their SLURM scripts)."""
    paths, overrides = split_items(items)
    if len(paths) != 1:
        raise ConfigError(f"give exactly one checkpoint (.ckpt or .safetensors), got {paths or 'none'}")
    return paths[0], overrides
