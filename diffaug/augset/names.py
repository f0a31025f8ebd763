"""Class names from user data turned into safe, distinct directory names.

A class name comes from a user's folder tree, label file or config, so it may be ``../../etc``, an
absolute path, empty, contain separators or NUL, or be a name Windows reserves (``CON``, ``LPT1``).
The directory name keeps the readable part and cannot leave the folder it is joined to.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

_MAX_LENGTH = 100  # well under the usual 255-byte file-name limit, with room for a suffix
_ALLOWED_PUNCTUATION = "-_.+"
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def _sanitize_one(name: str) -> str:
    name = unicodedata.normalize("NFC", str(name))
    safe = "".join(ch if (ch.isalnum() or ch in _ALLOWED_PUNCTUATION) else "_" for ch in name)
    # Leading dots make hidden files or "..", trailing dots and spaces are dropped by Windows.
    safe = safe.strip("._ ")[:_MAX_LENGTH].rstrip(". ")
    if not safe:
        return "class"
    stem, dot, rest = safe.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:  # reserved with any extension too: "con.txt" -> "con_.txt"
        safe = f"{stem}_{dot}{rest}"
    return safe


def sanitize_class_names(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """One safe directory name per class, distinct even on case-insensitive file systems.

    Names that collide after sanitising get their class index appended (``a_b-3``), so two classes
    never share a directory.
    """
    safe = [_sanitize_one(name) for name in names]
    for _ in range(len(safe) + 1):
        counts = Counter(s.casefold() for s in safe)
        clashes = [i for i, s in enumerate(safe) if counts[s.casefold()] > 1]
        if not clashes:
            return tuple(safe)
        for i in clashes:
            safe[i] = f"{safe[i]}-{i}"
    raise RuntimeError(f"could not make class directory names distinct: {safe}")
