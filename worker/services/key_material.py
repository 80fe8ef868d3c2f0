"""Loaded key objects, cached: expanding an ML-KEM seed costs as much as three encryptions.

The cache holds loaded keys only; a key's status is read from the store on every
request, so retire and archive take effect at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A small LRU map with a fixed maximum size."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._max = max_entries

    def get(self, key: K) -> V | None:
        """The cached value, refreshed as most recently used."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Insert, evicting the least recently used entry when full."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget one entry."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
