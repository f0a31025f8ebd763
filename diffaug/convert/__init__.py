"""Converters from public checkpoints into diffaug's own ``model.safetensors`` (weights, resolved config and
class names), which ``training.init_from``, ``diffaug sample`` and export then load strictly like any diffaug
model. ``CONVERTERS`` maps a source layout ("dit", "diffusers-dit") to its ``convert(src, out, ...)``; each
converter is one module here and registers itself; ``ConvertOptions`` holds what a source cannot say.
"""

from diffaug.convert.common import CONVERTERS, ConversionSummary, ConvertError, ConvertOptions, imagenet_class_names
from diffaug.registry import import_submodules

import_submodules(__name__)  # every converter module registers itself

__all__ = ["CONVERTERS", "ConversionSummary", "ConvertError", "ConvertOptions", "imagenet_class_names"]
