"""A least-recently-used map bounded by entries and by bytes (pure).

Every cache of a node is one of these, so none grows with the number of users or
commits: the figures are in docs/architecture.md ("Memory bounds").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# What an entry costs beyond its value's own size: the key, the OrderedDict node and
# the tuple holding the value and its size (measured with tracemalloc, CPython 3.11).
ENTRY_OVERHEAD = 200


class BoundedLru(Generic[K, V]):
    def __init__(
        self, max_entries: int, max_bytes: int, size: Callable[[V], int] = lambda _v: 0
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        cost = self._size(value) + ENTRY_OVERHEAD
        self._items[key] = (value, cost)
        self.bytes += cost
        while self._items and (len(self._items) > self.max_entries or self.bytes > self.max_bytes):
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def pop(self, key: K) -> V | None:
        hit = self._items.pop(key, None)
        if hit is None:
            return None
        self.bytes -= hit[1]
        return hit[0]
