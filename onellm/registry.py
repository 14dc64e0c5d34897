"""Named registries: the one way onellm maps a name in a config (a preset, a recipe, an expert kind, a metric, ...)
to the code behind it.

Every registry behaves alike: registering a second, different entry under a taken name is an error naming both
(two files cannot override each other depending on import order; registering the same object again is a no-op,
as a module re-import does), and looking up an unknown name is a ``KeyError`` listing the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def _describe(entry: object) -> str:
    target = entry if isinstance(entry, type) or callable(entry) else type(entry)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class Registry(Generic[T]):
    """``name -> entry`` for one ``kind`` of thing (the word errors use: "preset", "router mode", ...).

    ``same(old, new)`` decides whether registering ``new`` under a taken name repeats ``old`` (default: the same
    object); ``order`` sorts :meth:`names` (default: alphabetical; ``sort=False``: in registration order).
    """

    def __init__(
        self,
        kind: str,
        same: Callable[[T, T], bool] | None = None,
        order: Callable[[str], object] | None = None,
        sort: bool = True,
    ):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._same = same or (lambda old, new: old is new)
        self._order = order
        self._sort = sort

    def add(self, name: str, entry: T) -> T:
        known = self._entries.get(name)
        if known is not None and not self._same(known, entry):
            raise ValueError(
                f"{self.kind} {name!r} is already registered by {_describe(known)}; "
                f"cannot register {_describe(entry)} under it"
            )
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` adds the decorated object and returns it unchanged."""

        def wrap(entry: T) -> T:
            return self.add(name, entry)

        return wrap

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        if not self._sort:
            return list(self._entries)
        return sorted(self._entries, key=self._order) if self._order else sorted(self._entries)

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._entries.get(name, default)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (tests register throw-away entries into a copy)."""
        twin = Registry(self.kind, self._same, self._order, self._sort)
        twin._entries = dict(self._entries)
        return twin


__all__ = ["Registry"]
