"""How many images to generate per class."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from diffaug.config import ConfigError


def check_quota_mode(*, per_class: int | None, multiple: float | None, balance: bool) -> str:
    """The one sizing mode chosen (config key), or a ConfigError naming all three."""
    chosen = [
        name
        for name, on in (
            ("export.per_class", per_class is not None),
            ("export.multiple", multiple is not None),
            ("export.balance", bool(balance)),
        )
        if on
    ]
    if len(chosen) != 1:
        raise ConfigError(
            "choose exactly one way to size the export: export.per_class=N (N per class), "
            "export.multiple=M (M x the real class counts) or export.balance=true (top up rare classes "
            f"to the largest); got {', '.join(chosen) if chosen else 'none'}"
        )
    return chosen[0]


def compute_quotas(
    class_names: Sequence[str],
    *,
    per_class: int | None = None,
    multiple: float | None = None,
    balance: bool = False,
    real_counts: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Images to generate per class name, from exactly one of the three modes.

    - ``per_class=N``: N images for every class;
    - ``multiple=m``: round(m * real count) per class, so the synthetic set follows the real distribution;
    - ``balance=True``: (largest real count - real count), topping every class up to the largest.
    """
    mode = check_quota_mode(per_class=per_class, multiple=multiple, balance=balance)
    if per_class is not None:
        if per_class < 0:
            raise ConfigError(f"invalid value for config key 'export.per_class': {per_class}; must be >= 0")
        return {name: int(per_class) for name in class_names}

    if real_counts is None:
        raise ConfigError(f"{mode} needs the real class counts, but none were given or found")
    missing = [name for name in class_names if name not in real_counts]
    if missing:
        raise ConfigError(f"real class counts lack the classes {missing}; known: {sorted(real_counts)}")
    counts = {name: int(real_counts[name]) for name in class_names}
    if multiple is not None:
        if multiple < 0 or not math.isfinite(multiple):
            raise ConfigError(f"invalid value for config key 'export.multiple': {multiple}; must be >= 0")
        # floor(x + 0.5): round half up, the same on every platform (Python's round() rounds half to even).
        return {name: int(math.floor(multiple * count + 0.5)) for name, count in counts.items()}
    largest = max(counts.values(), default=0)
    return {name: largest - count for name, count in counts.items()}
