"""A small name -> object registry with glob listing and close-name suggestions.

Used for scorers, pruning methods, token reducers, exporters and runners: each kind has one
``Registry`` instance, and entries are registered explicitly where they are defined.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import VitCompressError

T = TypeVar("T")


def suggest(name: str, choices, n: int = 3) -> str:
    """A ' (did you mean a, b?)' hint, or an empty string when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages, e.g. 'scorer')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a one-line error when it is not registered)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise VitCompressError(
                f"unknown {self.kind} {name!r}{suggest(name, self._entries)}; "
                f"choose one of: {', '.join(sorted(self._entries))}"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
