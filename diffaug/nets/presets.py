"""The registry of network presets: name -> factory. Each network file registers its own presets."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from diffaug.nets.protocol import DenoiserNet, NetFactory
from diffaug.registry import Registry

NETS: Registry[NetFactory] = Registry("network preset")


def build_with(net_class: type[nn.Module], kwargs: dict[str, Any]) -> DenoiserNet:
    """net_class(**kwargs), with an error listing its arguments when one is unknown."""
    valid = list(inspect.signature(net_class).parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(
            f"{net_class.__name__} has no argument(s) {unknown}; valid arguments: {', '.join(valid)}"
        )
    return net_class(**kwargs)


def preset(net_class: type[nn.Module], **defaults: Any) -> NetFactory:
    """Factory building net_class from defaults updated by the caller's overrides."""
    return lambda **overrides: build_with(net_class, {**defaults, **overrides})


def build_net(name: str, **overrides: Any) -> DenoiserNet:
    """Build the preset `name` from NETS with keyword overrides (e.g. in_channels=1, resolution=28)."""
    return NETS.get(name)(**overrides)
