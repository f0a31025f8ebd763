"""The denoiser network contract: what the Denoiser wrapper, the builder and fine-tuning rely on.

A network is any ``nn.Module`` with these attributes; UNet and DiT are two. Written as typing Protocols, so
a new network needs no base class, and ``isinstance(net, DenoiserNet)`` checks the attributes are there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class DenoiserNet(Protocol):
    """``net(x (N, C, H, W), noise_level (N,), class_labels (N,) | None) -> (N, C, H, W)``.

    The network knows nothing about noise processes: noise_level is the process's value in [0, 1000]
    (``GaussianProcess.noise_level``) and the output's meaning (eps, x0, v, ...) is the Denoiser's.
    """

    in_channels: int  # C of the images it takes and returns
    resolution: int  # H = W
    num_classes: int  # 0: unconditional; else labels in [0, num_classes], num_classes the null class
    # State-dict key (under the network) of its (num_classes + 1, D) class embedding table: fine-tuning on
    # another class set remaps its rows by class name, and LoRA keeps it trainable.
    class_table: ClassVar[str]
    # Regexes on module names: the nn.Linear layers low-rank adaptation (training.lora_rank) adapts.
    lora_targets: ClassVar[tuple[str, ...]]

    def __call__(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


class NetFactory(Protocol):
    """Builds a network from explicit keyword arguments, never the config. The builder passes these five
    (from data.channels, data.resolution, the class count and model.*); a preset also takes overrides for any
    other constructor argument of its network (model.args)."""

    def __call__(
        self,
        *,
        in_channels: int = ...,
        resolution: int = ...,
        num_classes: int | None = ...,
        attn_backend: str = ...,
        grad_checkpointing: bool = ...,
        **overrides: Any,
    ) -> DenoiserNet: ...
