"""The data loader alone: diffaug's DiffusionDataModule on the embedded digits and on webdataset shards."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def write_digit_shards(directory: Path, maxcount: int = 500) -> Path:
    """scikit-learn's 1,797 digits as PNG webdataset shards (with manifest and classes.json)."""
    from diffaug.augset import write_shards
    from diffaug.data import DigitsSource

    source = DigitsSource()
    samples = ((source.load(i), int(source.targets[i])) for i in range(len(source)))
    write_shards(samples, directory / "digits-%06d.tar", maxcount=maxcount, class_map=source.class_map)
    return directory


def loader_throughput(source: str, *, resolution: int, channels: int, batch_size: int, num_workers: int,
                      batches: int, shard_dir: Path | None = None) -> dict:
    """Images/s of the training loader over ``batches`` batches (looping over epochs), its start-up apart."""
    from diffaug.data import DiffusionDataModule

    module = DiffusionDataModule(source=source, path=None if shard_dir is None else str(shard_dir),
                                 resolution=resolution, channels=channels, batch_size=batch_size,
                                 num_workers=num_workers, val_fraction=0.0 if source == "shards" else 0.05,
                                 shuffle_buffer=100)
    start = time.perf_counter()
    loader = module.train_dataloader()
    iterator, seen, first_batch_s = iter(loader), 0, None
    timed_start = None
    while seen < batches:
        try:
            images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        if timed_start is None:  # the first batch carries worker start-up and file opening
            first_batch_s = time.perf_counter() - start
            timed_start = time.perf_counter()
        else:
            seen += 1
    elapsed = time.perf_counter() - timed_start
    return {"source": source, "resolution": resolution, "channels": channels, "batch_size": batch_size,
            "num_workers": num_workers, "batches": batches, "first_batch_s": first_batch_s,
            "images_per_s": batches * batch_size / elapsed}


def measure_loaders(*, resolution: int, channels: int, batch_size: int, num_workers: int,
                    batches: int) -> list[dict]:
    results = [loader_throughput("sklearn_digits", resolution=resolution, channels=channels,
                                 batch_size=batch_size, num_workers=num_workers, batches=batches)]
    with tempfile.TemporaryDirectory(prefix="diffaug-bench-shards-") as tmp:
        shard_dir = write_digit_shards(Path(tmp))
        results.append(loader_throughput("shards", resolution=resolution, channels=channels,
                                         batch_size=batch_size, num_workers=num_workers, batches=batches,
                                         shard_dir=shard_dir))
    return results
