"""How images are drawn: the ``sampling.*`` settings that ``diffaug sample``, ``diffaug export``, the training
sample grid and the quality monitor share, so equal settings and weights draw equal images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from diffaug.build import sampler_options
from diffaug.config import ConfigError
from diffaug.registry import did_you_mean


def resolve_guidance(
    class_names: Sequence[str], guidance_scale: float, class_guidance: Mapping[str, float] | None
) -> list[float]:
    """The guidance scale of every class: the global scale unless ``class_guidance`` names the class."""
    class_guidance = dict(class_guidance or {})
    unknown = [name for name in class_guidance if name not in class_names]
    if unknown:
        hint = did_you_mean(str(unknown[0]), list(class_names))
        raise ConfigError(
            f"sampling.class_guidance names unknown classes {unknown}; the checkpoint's classes are "
            f"{list(class_names)}.{hint}"
        )
    return [float(class_guidance.get(name, guidance_scale)) for name in class_names]


@dataclass(frozen=True)
class SampleSettings:
    sampler: str
    steps: int
    seed: int = 0  # base seed: image i of class c uses derive_seed(seed, c, i)
    guidance_scale: float = 1.0
    class_guidance: Mapping[str, float] = field(default_factory=dict)  # per-class scale overrides
    random_guidance: tuple[float, float] | None = None  # or: every image's scale uniform in [lo, hi]
    sampler_args: Mapping[str, Any] = field(default_factory=dict)  # options of diffusion.sample
    precision: str = "32"
    microbatch: int = 32  # rows per network call: fixes the numerics, see FixedShapeDenoiser
    batch_size: int = 64  # images per generate call: memory only, never the images

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SampleSettings:
        s = cfg.sampling
        return cls(
            sampler=str(s.sampler),
            steps=int(s.steps),
            seed=int(s.seed),
            guidance_scale=float(s.guidance_scale),
            class_guidance={str(k): float(v) for k, v in s.class_guidance.items()},
            random_guidance=None if s.random_guidance is None else (float(s.random_guidance[0]),
                                                                     float(s.random_guidance[1])),
            sampler_args=sampler_options(cfg),
            precision=str(s.precision),
            microbatch=int(s.microbatch),
            batch_size=int(s.batch_size),
        )

    def guidance(self, class_names: Sequence[str]) -> list[float]:
        """The guidance scale of every class."""
        return resolve_guidance(class_names, self.guidance_scale, self.class_guidance)
