"""Reading webdataset tar shards, with per-rank / per-worker sharding and loss checks.

Shard layout, as written by :func:`diffaug.augset.write_shards` and the exporter::

    <dir>/shard-000000.tar   members <key>.png (any image extension), <key>.cls (ASCII class index),
                             optional <key>.json (metadata)
    <dir>/classes.json       ClassMap JSON: {"names": [...]}
    <dir>/shards.json        manifest: {"shard-000000.tar": 128, ...} samples per shard

tar readers stop silently at a damaged header, so when the manifest is present every shard's sample
count is checked against it and a shortfall is reported like any other corrupt data.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from urllib.parse import urlparse

import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset
from webdataset.autodecode import DecodingError
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from diffaug.data.base import SOURCES
from diffaug.data.classmap import ClassMap
from diffaug.data.corrupt import CorruptionLog
from diffaug.data.folder import image_extensions
from diffaug.data.transforms import ImageTransform

logger = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "shards.json"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Image members are recognised by extension; every format PIL opens, without the dot.
IMAGE_KEYS = frozenset(ext[1:] for ext in image_extensions())


class ShardSampleError(ValueError):
    """One sample of a shard is incomplete or invalid."""

    def __init__(self, url: str, key: str, problem: str):
        super().__init__(f"{url} (sample {key}): {problem}")
        self.url = url
        self.key = key
        self.problem = problem


# ----------------------------------------------------------------------------------------------- URLs


def expand_shard_urls(path: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard URLs from a directory (its tar files, sorted), a brace pattern or ``pipe:`` command
    (``"data-{000000..000009}.tar"``, ``"a.tar::b.tar"``), or an explicit list."""
    if isinstance(path, (list, tuple)):
        urls = [str(u) for u in path]
    elif Path(path).is_dir():
        urls = sorted(str(p) for p in Path(path).iterdir() if p.name.endswith(SHARD_SUFFIXES))
        if not urls:
            raise FileNotFoundError(f"no shards ({', '.join(SHARD_SUFFIXES)}) in directory {path}")
    else:
        urls = expand_urls(str(path))
    if not urls:
        raise ValueError(f"the shard specification {path!r} expands to no URLs")
    return urls


def _url_tokens(url: str) -> list[str]:
    """The file-like parts of a URL: the path of a plain URL, or each word of a ``pipe:`` command."""
    if url.startswith("pipe:"):
        return url[len("pipe:") :].split()
    parsed = urlparse(url)
    return [parsed.path if parsed.scheme in ("", "file") else url]


def shard_name(url: str) -> str:
    """The shard's file name, the key of the manifest: the last path-like token naming a tar file."""
    tokens = _url_tokens(url)
    tars = [t for t in tokens if t.split("?")[0].endswith(SHARD_SUFFIXES)]
    return os.path.basename((tars or tokens)[-1].split("?")[0])


def local_shard_dir(url: str) -> Path | None:
    """The local directory holding a shard, when the URL (or pipe command) names an existing file."""
    for token in reversed(_url_tokens(url)):
        if os.path.isfile(token):
            return Path(token).resolve().parent
    return None


def read_manifest(path: str | os.PathLike) -> dict[str, int]:
    """A shard manifest: file name -> number of samples."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"shard manifest {path} is not valid JSON: {error}") from None
    valid = isinstance(data, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    )
    if not valid:
        raise ValueError(
            f'shard manifest {path} must map shard file names to sample counts, e.g. {{"a.tar": 128}}'
        )
    return data


# -------------------------------------------------------------------------------------------- reading


def _split_by_rank(src: Iterable, *, rank: int, world_size: int) -> Iterator:
    """Node splitter for an explicitly given rank (launchers without torch.distributed, tests)."""
    yield from islice(src, rank, None, world_size)


class ShardErrorHandler:
    """webdataset exception handler: names the shard (and sample) and skips or fails per on_corrupt."""

    def __init__(self, urls: Sequence[str], corruption: CorruptionLog):
        self.corruption = corruption
        # Strings by which an error message may mention each shard, longest first so that the most
        # specific one wins (a pipe command's file, the URL, the local path).
        needles = {u: u for u in urls}
        for url in urls:
            for token in _url_tokens(url):
                if token.split("?")[0].endswith(SHARD_SUFFIXES):
                    needles.setdefault(token, url)
        self._needles = sorted(needles.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, exn: BaseException) -> bool:
        where, problem = self.describe(exn)
        self.corruption.report(where, problem)  # raises for on_corrupt="fail"
        return True

    def describe(self, exn: BaseException) -> tuple[str, str]:
        if isinstance(exn, ShardSampleError):
            return f"{exn.url} (sample {exn.key})", exn.problem
        if isinstance(exn, DecodingError):
            cause = exn.__cause__
            return f"{exn.url} (sample {exn.key})", f"cannot decode its .{exn.k} member: {cause!r}"
        message = str(exn.args[0]) if exn.args else ""
        problem = f"{type(exn).__name__}: {message}" if message else type(exn).__name__
        if isinstance(exn, tarfile.TarError):
            problem = f"unreadable tar data ({problem}); the file is truncated or damaged"
        return self._locate(exn), problem

    def _locate(self, exn: BaseException) -> str:
        texts = [a for a in exn.args if isinstance(a, str)] + [str(getattr(exn, "filename", "") or "")]
        texts += [str(a) for a in exn.args if not isinstance(a, str)]
        for text in texts:
            for needle, url in self._needles:
                if needle and needle in text:
                    return url
        return "an unidentified shard"


@SOURCES.register("shards")
class ShardDataset(IterableDataset):
    """(image (C, H, W) in [-1, 1], label) pairs streamed from webdataset shards.

    Shards are split first across ranks (``torch.distributed``, or ``rank``/``world_size`` when given)
    and then across DataLoader workers, so within one epoch every reader sees disjoint shards and no
    sample is seen twice. Under DDP each reader is trimmed to the same number of full ``batch_size``
    batches (needs the manifest), because ranks that run out of data at different steps deadlock.

    Class names come from ``class_names``, else from ``classes.json`` beside the shards.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike | Sequence[str],
        transform: ImageTransform,
        corruption: CorruptionLog,
        class_names: Sequence[str] | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        batch_size: int | None = None,
        max_items: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.urls = expand_shard_urls(path)
        self.transform = transform
        self.corruption = corruption
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.batch_size = batch_size
        self.max_items = max_items
        if (rank is None) != (world_size is None):
            raise ValueError("give rank and world_size together, or neither (then torch.distributed decides)")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.rank = rank
        self.world_size = world_size
        local_dir = local_shard_dir(self.urls[0])
        self.class_map = self._find_class_map(class_names, local_dir)
        self.manifest = self._find_manifest(local_dir)
        self._pipeline: wds.WebDataset | None = None

    # ------------------------------------------------------------------------------------ metadata

    def _find_class_map(self, class_names: Sequence[str] | None, local_dir: Path | None) -> ClassMap:
        if class_names is not None:
            return ClassMap(tuple(class_names))
        if local_dir is not None and (local_dir / CLASSES_FILE).is_file():
            return ClassMap.from_json(local_dir / CLASSES_FILE)
        where = f"in {local_dir}" if local_dir is not None else "(the shards are not local files)"
        raise FileNotFoundError(
            f"no {CLASSES_FILE} found {where} for shards {self.urls[0]}...; pass class_names"
        )

    def _find_manifest(self, local_dir: Path | None) -> dict[str, int] | None:
        if local_dir is None or not (local_dir / MANIFEST_FILE).is_file():
            return None
        manifest = read_manifest(local_dir / MANIFEST_FILE)
        unlisted = [u for u in self.urls if shard_name(u) not in manifest]
        if unlisted:
            raise ValueError(
                f"shard manifest {local_dir / MANIFEST_FILE} does not list {len(unlisted)} of the shards, "
                f"e.g. {unlisted[0]}; re-export the shards or delete the stale manifest"
            )
        return manifest

    @property
    def num_samples(self) -> int | None:
        """Samples in all shards according to the manifest (None without one)."""
        return None if self.manifest is None else sum(self.manifest[shard_name(u)] for u in self.urls)

    # ------------------------------------------------------------------------------------ sharding

    def _reader(self) -> tuple[int, int, int, int]:
        """(rank, world_size, worker, num_workers) of the process iterating now."""
        rank, world_size, worker, num_workers = pytorch_worker_info()
        if self.world_size is not None:
            rank, world_size = self.rank, self.world_size
        return rank, world_size, worker, num_workers

    def shards_of(self, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
        """The shards one reader gets: the same two islices as the pipeline's node and worker splitters."""
        return list(islice(islice(self.urls, rank, None, world_size), worker, None, num_workers))

    def _reader_cap(self, world_size: int, num_workers: int) -> int | None:
        """Most samples one reader may yield this epoch (None: no limit)."""
        readers = world_size * num_workers
        caps = []
        if self.max_items is not None:
            caps.append(max(1, self.max_items // readers))
        if world_size > 1 and self.batch_size is not None:
            if self.manifest is None:
                logger.warning(
                    "no %s beside the shards: DDP ranks cannot be trimmed to equal batch counts and may hang "
                    "at the end of an epoch; write shards with diffaug.augset.write_shards",
                    MANIFEST_FILE,
                )
            else:
                per_reader = [
                    sum(self.manifest[shard_name(u)] for u in self.shards_of(r, world_size, w, num_workers))
                    for r in range(world_size)
                    for w in range(num_workers)
                ]
                cap = min(per_reader) // self.batch_size * self.batch_size
                if cap == 0:
                    raise ValueError(
                        f"{len(self.urls)} shards cannot give each of {world_size} ranks x {num_workers} "
                        f"workers a full batch of {self.batch_size}; write more, smaller shards or use "
                        "fewer workers"
                    )
                caps.append(cap)
        return min(caps) if caps else None

    # ------------------------------------------------------------------------------------ pipeline

    def _build_pipeline(self) -> wds.WebDataset:
        handler = ShardErrorHandler(self.urls, self.corruption)
        if self.world_size is None:
            nodesplitter = wds.split_by_node
        else:
            nodesplitter = functools.partial(_split_by_rank, rank=self.rank, world_size=self.world_size)
        pipeline = wds.WebDataset(
            self.urls,
            handler=handler,
            # Shard order is shuffled after splitting, so readers stay disjoint; detshuffle reseeds per epoch.
            shardshuffle=len(self.urls) if self.shuffle else False,
            detshuffle=True,
            seed=self.seed,
            nodesplitter=nodesplitter,
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker may get no shard when there are fewer shards than workers
        )
        # Count before decoding: the manifest check is about samples lost inside the tar stream.
        pipeline = pipeline.compose(self._check_counts)
        if self.shuffle and self.shuffle_buffer > 1:
            pipeline = pipeline.compose(
                wds.detshuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), seed=self.seed)
            )
        decodable = sorted(IMAGE_KEYS | {"cls", "json"})
        pipeline = pipeline.decode(
            wds.handle_extension(" ".join(sorted(IMAGE_KEYS)), _decode_image),
            wds.handle_extension("cls", _decode_class_index),
            wds.handle_extension("json", json.loads),
            # No default pre/post handlers: they unpickle .pyd/.pickle members, unsafe for untrusted shards.
            pre=[],
            post=[],
            only=decodable,
            handler=handler,
        )
        return pipeline.map(self._to_pair, handler=handler)

    def __iter__(self) -> Iterator[tuple[Tensor, int]]:
        if self._pipeline is None:  # built once per process; detshuffle's epoch counter lives in it
            self._pipeline = self._build_pipeline()
        _, world_size, _, num_workers = self._reader()
        cap = self._reader_cap(world_size, num_workers)
        samples = iter(self._pipeline)
        try:
            yield from samples if cap is None else islice(samples, cap)
        finally:
            samples.close()  # a capped epoch stops early: release the open shard (file or pipe) now

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pipeline"] = None  # rebuilt in each worker process
        return state

    def _check_counts(self, samples: Iterable[dict]) -> Iterator[dict]:
        """Pass samples through; compare each shard's sample count with the manifest."""
        if self.manifest is None:
            yield from samples
            return
        counts: Counter[str] = Counter()
        current = None
        for sample in samples:
            url = sample["__url__"]
            if url != current:
                if current is not None:
                    self._check_shard(current, counts[current])
                current = url
            counts[url] += 1
            yield sample
        if current is not None:
            self._check_shard(current, counts[current])
        # Shards of this reader that yielded nothing at all (their open/read error was already reported).
        for url in self.shards_of(*self._reader()):
            if url not in counts:
                self._check_shard(url, 0)

    def _check_shard(self, url: str, found: int) -> None:
        expected = self.manifest[shard_name(url)]
        if found < expected:
            self.corruption.report(
                url,
                f"yielded {found} samples but the manifest says {expected}; the tar file is truncated or has "
                "a damaged header",
            )
        elif found > expected:
            logger.warning("shard %s yielded %d samples, more than the manifest's %d", url, found, expected)

    def _to_pair(self, sample: dict) -> tuple[Tensor, int]:
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        image_keys = [k for k in sample if k in IMAGE_KEYS]
        if not image_keys:
            members = sorted(k for k in sample if not k.startswith("__"))
            raise ShardSampleError(url, key, f"has no image member (found {members})")
        if "cls" not in sample:
            raise ShardSampleError(url, key, "has no .cls member (class index)")
        label = sample["cls"]
        if not 0 <= label < len(self.class_map):
            raise ShardSampleError(
                url, key, f"class index {label} is outside [0, {len(self.class_map)}) of the class map"
            )
        return self.transform(sample[image_keys[0]]), label


def _decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _decode_class_index(data: bytes) -> int:
    text = data.decode("ascii").strip()
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"a .cls member must hold a non-negative integer, got {text[:20]!r}")
    return int(text)
