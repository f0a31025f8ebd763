"""Per-image seeds that depend only on (base seed, class index, image index).

The seed of image ``i`` of class ``c`` is a stable hash of the three numbers, so it is the same whatever
the batch size, the number of processes or the order in which the work is done. Python's ``hash()`` is
salted per process and would break this, so SHA-256 is used.
"""

from __future__ import annotations

import hashlib

# torch.Generator.manual_seed accepts any 64-bit value; 63 bits keep the seed a positive int64 everywhere.
_SEED_MASK = (1 << 63) - 1


def unit_fraction(seed: int, stream: str) -> float:
    """A number in [0, 1) that depends only on ``seed`` and the name of what it is for (e.g. an image's
    random guidance scale), independent of the noise the same seed draws."""
    digest = hashlib.sha256(f"diffaug-{stream}:{seed}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)  # 53 bits: every double in [0, 1)


def derive_seed(base_seed: int, class_index: int, index: int) -> int:
    """The seed of image ``index`` of class ``class_index`` in a set sampled with ``base_seed``."""
    for name, value in (("base_seed", base_seed), ("class_index", class_index), ("index", index)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if class_index < 0 or index < 0:
        raise ValueError(f"class_index and index must be >= 0, got {class_index} and {index}")
    digest = hashlib.sha256(f"diffaug-sample:{base_seed}:{class_index}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK
