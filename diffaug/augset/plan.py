"""What an export makes: its plan (every setting that shapes the files), its work items, and which
part of them each process makes.

Work item ``(c, i)`` is image ``i`` of class ``c``. Items are ordered by class then index; item ``j`` of
that order belongs to part ``j % world_size``, so parts are disjoint, cover everything, and stay
balanced across classes whatever the quotas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from diffaug.augset import layout
from diffaug.augset.files import canonical_json
from diffaug.augset.seeds import derive_seed, unit_fraction
from diffaug.config import ConfigError

FORMATS = ("folder", "shards")
# export.source_images value meaning "the images the checkpoint was trained on" (read through its data
# config, so a k-shot run varies exactly its k images per class, also when they live in IDX files or shards);
# their source ids are ``train:<class folder>/<n>``.
TRAINING_SOURCES = "train"


@dataclass(frozen=True)
class WorkItem:
    class_index: int
    index: int  # position within its class: 0 .. quota-1
    seed: int
    guidance: float
    source: str | None = None  # the real image this one is a variation of (image-conditioned mode)

    @property
    def key(self) -> str:
        """Unique sample key without dots (webdataset splits keys at the first dot)."""
        return f"c{self.class_index:05d}_{self.index:07d}"


def build_items(
    quotas: Sequence[int],
    *,
    base_seed: int,
    guidance: Sequence[float],
    sources: Sequence[Sequence[str]] | None = None,
    random_guidance: Sequence[float] | None = None,
) -> list[WorkItem]:
    """All work items ordered by (class, index).

    In image-conditioned mode image ``i`` of class ``c`` varies source ``i % len(sources[c])`` (sources
    sorted by the caller), so every real image is used as evenly as the quota allows. With
    ``random_guidance = (lo, hi)`` each image's scale is uniform in [lo, hi], drawn from its own seed (so the
    same at any batch size) and rounded to 4 decimals (what the manifest shows is what was used).
    """
    items = []
    for c, quota in enumerate(quotas):
        class_sources = None if sources is None else sources[c]
        if class_sources is not None and quota > 0 and len(class_sources) == 0:
            raise ConfigError(
                f"class {c} needs {quota} variations but export.source_images has no image of it"
            )
        for i in range(quota):
            source = None if class_sources is None else class_sources[i % len(class_sources)]
            seed = derive_seed(base_seed, c, i)
            scale = float(guidance[c])
            if random_guidance is not None:
                lo, hi = random_guidance
                scale = round(lo + (hi - lo) * unit_fraction(seed, "guidance"), 4)
            items.append(WorkItem(c, i, seed, scale, source))
    return items


def items_of_part(items: Sequence[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    """The items part ``rank`` of ``world_size`` makes: every ``world_size``-th, starting at ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])


@dataclass(frozen=True)
class ExportPlan:
    """Every setting that determines the exported files; equal plans give byte-equal sets.

    Batch size, number of processes and output folder are not part of it: they cannot change the result.
    The device type is: CPUs and GPUs draw different random numbers from the same seed and round
    differently, so parts made on different device types would not make the set one command makes.
    ``precision`` is the one sampling ran in (fp32 on a CPU whatever sampling.precision asks for).
    """

    class_names: tuple[str, ...]
    class_dirs: tuple[str, ...]  # sanitised folder name of each class
    quotas: tuple[int, ...]  # images to generate per class
    guidance: tuple[float, ...]  # guidance scale per class
    sampler: str
    steps: int
    seed: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    checkpoint_sha256: str
    sampler_args: dict[str, Any] = field(default_factory=dict)
    precision: str = "32"
    microbatch: int = 32  # rows per network call: fixes the numerics, see FixedShapeDenoiser
    device_type: str = "cpu"  # "cpu", "cuda", "mps": where the images were sampled
    formats: tuple[str, ...] = ("folder",)
    shard_size: int = 1000
    strength: float | None = None  # SDEdit strength (image-conditioned mode)
    sources: tuple[tuple[str, ...], ...] | None = None  # per class: real images to vary, sorted
    curation: dict[str, Any] = field(default_factory=dict)  # classifier / near-duplicate settings
    random_guidance: tuple[float, float] | None = None  # per-image scale uniform in [lo, hi]
    autoencoder_sha256: str | None = None  # a latent model's decoder: the images depend on it too

    def __post_init__(self) -> None:
        k = len(self.class_names)
        for name in ("class_dirs", "quotas", "guidance"):
            if len(getattr(self, name)) != k:
                raise ValueError(
                    f"ExportPlan.{name} needs one entry per class ({k}), got {len(getattr(self, name))}"
                )
        bad = sorted(set(self.formats) - set(FORMATS))
        if bad or not self.formats:
            raise ConfigError(
                f"invalid value for config key 'export.formats': {list(self.formats)}; "
                f"choose one or both of: {', '.join(FORMATS)}"
            )
        if self.shard_size < 1:
            raise ConfigError(
                f"invalid value for config key 'export.shard_size': {self.shard_size}; must be >= 1"
            )
        if self.sources is not None and (self.strength is None or not 0.0 < self.strength <= 1.0):
            raise ConfigError(
                f"image-conditioned export needs export.strength in (0, 1], got {self.strength}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = json.loads(json.dumps(asdict(self)))  # tuples -> lists: the form it has in plan.json
        # Absent when unset (no random guidance, a pixel model): earlier sets keep their identity.
        for name in ("random_guidance", "autoencoder_sha256"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportPlan:
        d = dict(data)
        for name in ("class_names", "class_dirs", "quotas", "guidance", "formats"):
            d[name] = tuple(d[name])
        d["image_shape"] = tuple(d["image_shape"])
        if d.get("sources") is not None:
            d["sources"] = tuple(tuple(s) for s in d["sources"])
        if d.get("random_guidance") is not None:
            d["random_guidance"] = tuple(d["random_guidance"])
        return cls(**d)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def items(self) -> list[WorkItem]:
        return build_items(self.quotas, base_seed=self.seed, guidance=self.guidance, sources=self.sources,
                           random_guidance=self.random_guidance)

    def image_path(self, item: WorkItem) -> str:
        """Path of the item's PNG relative to the output folder."""
        return layout.image_path(self.class_dirs[item.class_index], item.index)
