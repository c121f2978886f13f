"""One registry type for everything slimlab looks up by name: compression methods, storage formats, tasks and
answer scorers. A module registers its entries when imported; `load_builtins()` imports every module of the
registry's package once, so adding a method or a task is adding one file."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name (the message lists the known ones) or a name registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def suggest(name: str, known: list[str]) -> str:
    """'did you mean ...? known: ...' for an unknown name."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}known: {', '.join(sorted(known))}"


class Registry(Generic[T]):
    """Named entries of one kind. Registering a name twice is an error: two files claiming one method
    would otherwise depend on import order."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package  # whose modules register the built-in entries
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def load_builtins(self) -> Registry[T]:
        """Import every module of the package (each registers itself); idempotent."""
        if not self._loaded and self.package is not None:
            self._loaded = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        return self

    def get(self, name: str) -> T:
        self.load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"no {self.kind} {name!r}; {suggest(name, list(self._entries))}") from None

    def find(self, name: str) -> T | None:
        """The entry, or None for an unknown name (for optional look-ups)."""
        self.load_builtins()
        return self._entries.get(name)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load_builtins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_builtins()
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.load_builtins()
        return list(self._entries.items())

    def values(self) -> list[T]:
        return [v for _, v in self.items()]

    def names(self) -> list[str]:
        return list(self)
