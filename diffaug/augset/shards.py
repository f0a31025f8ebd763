"""Writing webdataset tar shards: the one tar writer behind every shard diffaug writes (exported sets and
training shards), in the layout :class:`diffaug.data.ShardDataset` reads::

    <dir>/shard-000000.tar   members <key>.png (or another image extension), <key>.cls (ASCII class index),
                             optional <key>.json (metadata)
    <dir>/classes.json       ClassMap JSON: {"names": [...]}
    <dir>/shards.json        shard file name -> samples, against which the reader checks every shard

Members carry no owner, a fixed mode and mtime 0, and each shard is written to a temporary name then
renamed, so the same samples give byte-equal shards and a killed writer never leaves half a shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import count, islice
from pathlib import Path
from typing import Any

import webdataset as wds

from diffaug.augset.files import atomic_file, atomic_write_json
from diffaug.augset.images import encode_image
from diffaug.augset.layout import CLASSES_JSON, SHARD_INDEX
from diffaug.data.classmap import ClassMap

Sample = Mapping[str, Any]  # {"__key__": key without dots, "<extension>": bytes, ...}


def write_tar(path: str | os.PathLike, samples: Iterable[Sample], *, tag: str = "w") -> int:
    """One tar shard of webdataset samples, in the given order (each sample's members sorted by extension);
    returns the number of samples."""
    written = 0
    with atomic_file(path, tag=tag) as handle:
        # No owner, mode 0644, mtime 0: nothing of the writing machine or moment goes into the file.
        with wds.TarWriter(handle, encoder=False, user="", group="", mode=0o644, mtime=0.0) as sink:
            for sample in samples:
                sink.write(dict(sample))
                written += 1
    return written


def write_shard_index(
    shard_dir: Path, class_names: Sequence[str], counts: Mapping[str, int], *, tag: str = "w"
) -> None:
    """The files the data module reads beside shards: ``classes.json`` (ClassMap JSON) and ``shards.json``
    (shard file name -> samples), against which it checks each shard, catching the silent loss that a
    damaged tar header causes."""
    atomic_write_json(shard_dir / CLASSES_JSON, {"names": list(class_names)}, tag=tag)
    atomic_write_json(shard_dir / SHARD_INDEX, dict(sorted(counts.items())), tag=tag)


def _samples(samples: Iterable[tuple], class_map: ClassMap | None, image_format: str) -> Iterator[dict]:
    for index, sample in enumerate(samples):
        image, label, *extra = sample
        label = int(label)
        if class_map is not None and not 0 <= label < len(class_map):
            raise ValueError(f"sample {index}: label {label} outside [0, {len(class_map)}) of the class map")
        record = {
            "__key__": f"{index:08d}",
            image_format: encode_image(image, image_format),
            "cls": str(label).encode("ascii"),
        }
        if extra:
            record["json"] = json.dumps(extra[0]).encode("utf-8")
        yield record


def write_shards(
    samples: Iterable[tuple],
    pattern: str | os.PathLike,
    *,
    maxcount: int,
    class_map: ClassMap | None = None,
    image_format: str = "png",
) -> dict[str, int]:
    """Write ``(image, label)`` or ``(image, label, metadata_dict)`` samples to tar shards.

    ``pattern`` is a printf pattern such as ``out/shard-%06d.tar``. Next to the shards go the manifest
    ``shards.json`` and, with ``class_map``, ``classes.json``. Images are PIL images, uint8 arrays
    (H, W[, C]) or uint8 tensors (C, H, W). Returns the manifest (shard file name -> sample count).
    """
    if maxcount < 1:
        raise ValueError(f"maxcount must be at least 1, got {maxcount}")
    pattern = str(pattern)
    directory = Path(pattern).parent
    directory.mkdir(parents=True, exist_ok=True)
    records = _samples(samples, class_map, image_format)
    counts: dict[str, int] = {}
    for shard in count():
        chunk = list(islice(records, maxcount))
        if not chunk:
            break
        path = Path(pattern % shard)
        counts[path.name] = write_tar(path, chunk)
    if not counts:
        raise ValueError("write_shards got no samples")
    atomic_write_json(directory / SHARD_INDEX, counts)
    if class_map is not None:
        class_map.to_json(directory / CLASSES_JSON)
    return counts
