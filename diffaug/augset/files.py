"""Crash-safe file writes (a file appears under its final name complete or not at all) and file hashes.

Every write goes to a hidden temporary name in the same directory (so ``os.replace`` is an atomic
rename on the same file system), is flushed and fsynced, then renamed. Temporary names carry the
writer's part number (``tag``) so a restarted part can remove what its killed predecessor left behind
without touching files another part is writing at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMP_MARKER = ".tmp-"


def temp_path(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}{TEMP_MARKER}{tag}-{os.getpid()}"


def is_temp_name(name: str, tag: str | None = None) -> bool:
    """Whether ``name`` is a temporary file of this module (of part ``tag`` when given)."""
    if not name.startswith(".") or TEMP_MARKER not in name:
        return False
    return tag is None or f"{TEMP_MARKER}{tag}-" in name


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, *, tag: str = "w", sync_dir: bool = True) -> Iterator[BinaryIO]:
    """A binary handle on a temporary name; on a clean exit the data is fsynced and renamed to ``path``,
    on an error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, tag)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, tag: str = "w", sync_dir: bool = True) -> Path:
    with atomic_file(path, tag=tag, sync_dir=sync_dir) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, tag: str = "w") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), tag=tag)


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and a trailing newline: equal data give equal bytes."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, data: Any, *, tag: str = "w") -> Path:
    return atomic_write_text(path, canonical_json(data), tag=tag)


def remove_temp_files(root: str | Path, tag: str | None = None) -> int:
    """Delete temporary files under ``root`` (only part ``tag``'s when given); returns how many."""
    removed = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if is_temp_name(name, tag):
                Path(directory, name).unlink(missing_ok=True)
                removed += 1
    return removed


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints and feature networks are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
