"""Read what an offline W&B run recorded: the records of its ``run-<id>.wandb`` file, decoded with wandb's own
protobuf messages. The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks, each with
a 7-byte header: CRC-32, length, type), the format ``wandb sync`` reads."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # file header ":W&B" + magic + version; chunk header: crc32 <I, length <H, type <B
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


class OfflineRun:
    """One ``wandb/offline-run-*`` folder: its job type, config, artifacts and logged values."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.file,) = self.folder.glob("run-*.wandb")
        self.job_type = ""
        self.config: dict = {}
        self.artifacts: list[pb.ArtifactRecord] = []
        self.history: dict[str, object] = {}  # the last value of each logged key (media as their fields)
        for record in records(self.file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.job_type = record.run.job_type or self.job_type
                self._update_config(record.run.config)
            elif kind == "config":
                self._update_config(record.config)
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
            elif kind == "history":
                for item in record.history.item:
                    self.history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)

    def _update_config(self, config: pb.ConfigRecord) -> None:
        for item in config.update:
            self.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)

    def value(self, key: str):
        """A top-level config value as logged (older wandb versions wrap it in {"value": ...})."""
        value = self.config[key]
        return value["value"] if isinstance(value, dict) and set(value) == {"value"} else value

    def artifact(self, name: str) -> pb.ArtifactRecord:
        """The one version of ``name`` this run logged."""
        (found,) = self.versions(name)
        return found

    def versions(self, name: str) -> list[pb.ArtifactRecord]:
        return [a for a in self.artifacts if a.name == name]


def offline_runs(run_dir: Path) -> dict[str, OfflineRun]:
    """job type -> the newest offline run of that type under ``run_dir``/wandb."""
    runs = [OfflineRun(folder) for folder in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))]
    return {run.job_type: run for run in runs}
