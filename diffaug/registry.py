"""One generic name -> object registry, used for data sources, noise processes, samplers and network presets.

Each component registers itself where it is defined (``@PROCESSES.register("ddpm")``), and its package
imports all of its modules (:func:`import_submodules`), so a new component is one new file: the config
schema, the loader's name check and the builder all read the registry. Lookups that miss raise a
``KeyError`` that lists every registered name and, when the name looks like a typo, the closest one, so a
wrong config value is fixed from the error message alone.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def import_submodules(package: str) -> None:
    """Import every module of ``package``, so that the registrations in each of its files run."""
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """Maps names to objects (classes, factories or functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    @contextmanager
    def temporary(self) -> Iterator[None]:
        """Registrations made inside the block are dropped at its end (throwaway components in tests)."""
        saved = dict(self._items)
        try:
            yield
        finally:
            self._items = saved

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if name not in self._items:
            names = sorted(self._items)
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(names)}.{did_you_mean(name, names)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
