"""Low-rank adaptation (Hu et al. 2021) of a network's attention and MLP projections, merged on export.

``W x + (alpha / r) B A x`` with A (r, in) random and B (out, r) zero, so an adapted network starts exactly
equal to the original. Only A and B train; :func:`merge_lora_state_dict` folds ``(alpha / r) B A`` back into
W so exported weights load into the plain network.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

# Linear layers adapted (regexes on module names): attention qkv / output projections, and the MLPs of
# transformer blocks (not the MLP that embeds the noise level).
LORA_TARGETS: tuple[str, ...] = (r"(^|\.)attn\.(qkv|proj)$", r"(^|\.)blocks\.\d+\.mlp\.fc[12]$")
_LORA_PARTS = r"base\.weight|base\.bias|lora_down\.weight|lora_up\.weight|lora_scale"
_LORA_KEY = re.compile(rf"^(?P<prefix>.*)\.(?P<part>{_LORA_PARTS})$")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.lora_down = nn.Linear(base.in_features, rank, bias=False)  # A: (r, in)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False)  # B: (out, r)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        # Stored with the weights so a checkpoint can be merged without knowing alpha.
        self.register_buffer("lora_scale", torch.tensor(float(alpha if alpha is not None else rank) / rank))
        self.lora_down.to(base.weight.device, base.weight.dtype)
        self.lora_up.to(base.weight.device, base.weight.dtype)

    @property
    def weight(self) -> Tensor:  # the frozen weight, for code that inspects a linear layer's dtype or shape
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return self.base(x) + self.lora_up(self.lora_down(x)) * self.lora_scale.to(x.dtype)


def _is_target(name: str, targets: tuple[str, ...]) -> bool:
    return any(re.search(pattern, name) for pattern in targets)


def add_lora(module: nn.Module, *, rank: int, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches a target pattern by a :class:`LoRALinear`, in place.

    Returns the adapted layer names; raises when the network has none of the targets.
    """
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and _is_target(n, targets)]
    if not names:
        raise ValueError(
            f"LoRA found no linear layers matching {', '.join(targets)} in {type(module).__name__}; "
            "use a network with attention/MLP blocks (e.g. a DiT, or a UNet with attention) or "
            "training.lora_rank=0"
        )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(getattr(parent, child), rank=rank))
    return names


def merge_lora_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold every LoRA layer of a state dict: ``X.base.*`` + ``X.lora_*`` -> ``X.weight`` / ``X.bias``;
    other keys are unchanged."""
    merged: dict[str, Tensor] = {}
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match:
            layers.setdefault(match["prefix"], {})[match["part"]] = value
        else:
            merged[key] = value
    for prefix, parts in layers.items():
        missing = {"base.weight", "lora_down.weight", "lora_up.weight", "lora_scale"} - set(parts)
        if missing:
            raise ValueError(f"LoRA layer {prefix!r} in the state dict lacks {sorted(missing)}")
        delta = parts["lora_scale"] * (parts["lora_up.weight"].float() @ parts["lora_down.weight"].float())
        merged[f"{prefix}.weight"] = (parts["base.weight"].float() + delta).to(parts["base.weight"].dtype)
        if "base.bias" in parts:
            merged[f"{prefix}.bias"] = parts["base.bias"]
    return merged
