"""Reporting of corrupt or unreadable data, visible across DataLoader worker processes."""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Literal, get_args

logger = logging.getLogger(__name__)

OnCorrupt = Literal["skip", "fail"]


class CorruptDataError(RuntimeError):
    """A file or shard could not be read; the message names it."""


def check_on_corrupt(on_corrupt: str) -> OnCorrupt:
    if on_corrupt not in get_args(OnCorrupt):
        raise ValueError(f"on_corrupt={on_corrupt!r} is not valid; choose one of {list(get_args(OnCorrupt))}")
    return on_corrupt  # type: ignore[return-value]


def _remove(path: str, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked worker dropping its copy must not delete the parent's log
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class CorruptionLog:
    """Skips or fails on corrupt data, and remembers what was skipped.

    DataLoader workers are separate processes, so a plain counter would stay in the worker. Each skipped
    item is appended as one line to a small file instead (one short O_APPEND write: atomic, never blocks),
    which the main process reads back. Only the path string travels to the workers, so this works with
    fork and spawn alike.
    """

    def __init__(self, on_corrupt: OnCorrupt):
        self.on_corrupt = check_on_corrupt(on_corrupt)
        fd, self._path = tempfile.mkstemp(prefix="diffaug-skipped-", suffix=".txt")
        os.close(fd)
        # Only the creating process deletes the file; workers hold copies of this object.
        self._finalizer = weakref.finalize(self, _remove, self._path, os.getpid())

    def __getstate__(self) -> dict:
        return {"on_corrupt": self.on_corrupt, "_path": self._path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def report(self, where: str, problem: str) -> None:
        """Raise for on_corrupt="fail"; otherwise warn, naming ``where``, and record it."""
        if self.on_corrupt == "fail":
            raise CorruptDataError(
                f"corrupt data in {where}: {problem}. Fix or remove it, or set on_corrupt='skip' to skip "
                "unreadable items with a warning"
            )
        logger.warning("skipping corrupt data in %s: %s", where, problem)
        line = where.replace("\n", " ") + "\n"
        with open(self._path, "a", encoding="utf-8") as log:
            log.write(line)

    @property
    def skipped(self) -> list[str]:
        """Distinct skipped items (file paths, shard paths or shard/key), sorted."""
        try:
            lines = Path(self._path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return sorted(set(lines))

    @property
    def count(self) -> int:
        """Number of distinct skipped items; an item hit again in a later epoch counts once."""
        return len(self.skipped)


class UnreadableItem(Exception):
    """Raised by a source when one item cannot be decoded; the caller decides to skip or fail."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
