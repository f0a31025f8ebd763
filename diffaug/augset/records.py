"""Durable per-image records: one append-only JSON-lines log per part.

A record is appended (and fsynced) only after its image file is in place, so "record exists and image
exists" means the image is finished. A kill can leave a torn last line; readers ignore lines that do
not parse, and the owning part cuts the torn tail off before it appends again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_GLOB = "records-*.jsonl"


def log_path(work_dir: Path, tag: str) -> Path:
    return work_dir / f"records-{tag}.jsonl"


class RecordLog:
    """Append-only record log of one part; use as a context manager."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def __enter__(self) -> RecordLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._handle = open(self.path, "ab")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning(
                "%s: dropping a torn last record (%d bytes) left by an interrupted run",
                self.path,
                len(data) - keep,
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        if self._handle is None:
            raise RuntimeError("RecordLog.append outside its `with` block")
        lines = b"".join(
            json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n" for r in records
        )
        self._handle.write(lines)
        self._handle.flush()
        os.fsync(self._handle.fileno())


def read_records(work_dir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Every complete record of every part, keyed by (class_index, index)."""
    records: dict[tuple[int, int], dict[str, Any]] = {}
    for path in sorted(work_dir.glob(LOG_GLOB)):
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (int(record["class_index"]), int(record["index"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed or still-writing part
            records[key] = record
    return records
