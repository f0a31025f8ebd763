"""Image classifiers for the downstream benchmark and the domain feature extractor.

Every classifier follows timm's split: ``forward_features(x)`` then ``forward_head(f, pre_logits=True)``
gives the penultimate features, ``forward(x)`` the logits. Names not in :data:`CLASSIFIERS` are timm
architectures, always randomly initialised: the benchmark measures the data, not a pretraining.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffaug.registry import Registry, did_you_mean

CLASSIFIERS: Registry = Registry("classifier")


class SmallCNN(nn.Module):
    """Three conv stages (width, 2 width, 4 width; pooling between) with batch norm, global average pooling, linear head."""

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        # One conv per resolution keeps a training step cheap on a CPU (a benchmark trains many of these).
        self.body = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width),
        )
        self.num_features = 4 * width
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (N, 4 width, H / 4, W / 4)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = features.mean(dim=(2, 3))  # (N, 4 width)
        return pooled if pre_logits else self.head(self.dropout(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes)


CLASSIFIERS.add("small-cnn", SmallCNN)


def build_classifier(name: str, *, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """A registered classifier or a timm architecture by name, randomly initialised."""
    if name in CLASSIFIERS:
        return CLASSIFIERS.get(name)(in_channels=in_channels, num_classes=num_classes, **kwargs)
    import timm

    if not timm.is_model(name):
        hint = did_you_mean(name, CLASSIFIERS.names() + timm.list_models())
        raise KeyError(
            f"unknown classifier {name!r}; use one of {', '.join(CLASSIFIERS.names())} or a timm architecture "
            f"(timm.list_models() lists them, e.g. resnet18).{hint}"
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


@torch.no_grad()
def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, D) features before the classifier's last linear layer."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
