"""A tiny named registry for open-ended sets (corpus readers, chat formats, metrics, tuning methods, model families).

Registering the same name twice is a programming error and raises at import time, so two plugins can never
silently shadow each other.
"""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from wenzhen.errors import WenzhenError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to items of one kind; refuses duplicates and names the choices on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register `item` under `name`; raise if the name is taken."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def decorator(item: T) -> T:
            return self.add(name, item)

        return decorator

    def get(self, name: str) -> T:
        """The item registered as `name`, or a WenzhenError listing the known names."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise WenzhenError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, item) pairs in registration order."""
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items
