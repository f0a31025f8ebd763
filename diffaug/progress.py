"""Progress bars for the long steps outside the training loop (Lightning draws that one): sampling a grid,
classifier training (downstream arms, the domain feature extractor), feature extraction, bits/dim.

Bars show on a terminal only: off when stderr is not a TTY (log files, CI, captured test output) and when
``logging.progress_bar=false`` (the commands call :func:`set_progress`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn every bar of this process on or off (``logging.progress_bar``)."""
    global _enabled
    _enabled = bool(enabled)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True) -> Iterable[T]:
    """``iterable``, with a bar that clears itself when done (``enabled=False``: never a bar)."""
    show = enabled and _enabled and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=not show)
