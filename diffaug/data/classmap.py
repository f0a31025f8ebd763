"""Class index <-> class name mapping shared by data sources, training and the exporter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaug.registry import did_you_mean

UNLABELLED_NAME = "all"


@dataclass(frozen=True)
class ClassMap:
    """Ordered, unique, non-empty class names; class index i is ``names[i]``."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not hasattr(self.names, "__iter__"):
            raise TypeError(f"ClassMap names must be a sequence of strings, got {self.names!r}")
        names = tuple(self.names)
        object.__setattr__(self, "names", names)  # frozen: accept lists, store a tuple
        if not names:
            raise ValueError("ClassMap needs at least one class name")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class name {i} must be a non-empty string, got {name!r}")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {duplicates}")

    @classmethod
    def unlabelled(cls) -> ClassMap:
        """The single-class map used for data without labels."""
        return cls((UNLABELLED_NAME,))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            hint = did_you_mean(name, list(self.names))
            raise KeyError(f"unknown class {name!r}; classes: {', '.join(self.names)}.{hint}") from None

    def name(self, i: int) -> str:
        if not 0 <= int(i) < len(self.names):
            raise IndexError(f"class index {i} out of range [0, {len(self.names)})")
        return self.names[int(i)]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, data: Any) -> ClassMap:
        if not isinstance(data, dict) or "names" not in data:
            raise ValueError(f'a class map must be a mapping {{"names": [...]}}, got {data!r}')
        unknown = sorted(set(data) - {"names"})
        if unknown:
            raise ValueError(f"unknown class map keys {unknown}; the only key is 'names'")
        if not isinstance(data["names"], list):
            raise ValueError(f"class map 'names' must be a list of strings, got {data['names']!r}")
        return cls(tuple(data["names"]))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"class map file {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"class map file {path} is not valid JSON: {error}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"class map file {path}: {error}") from None
