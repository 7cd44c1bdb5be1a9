"""A small explicit registry with did-you-mean errors (no package walking, no import side effects)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to objects (usually classes)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def deco(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        key = name.lower().strip()
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown {self.kind} {name!r}: {hint}choose one of {', '.join(sorted(self._items))} "
            f"(`prunekit ls` lists them)"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_builtin(package: str, modules: tuple[str, ...]) -> None:
    """Import a package's built-in plug-in modules (each registers itself); a module not present
    in this build is skipped, an import error inside a present one is raised."""
    import importlib

    for mod in modules:
        try:
            importlib.import_module(f"{package}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{mod}":
                raise
