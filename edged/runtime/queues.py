"""Bounded queues between pipeline stages, with an overflow policy and counters."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Overflow = Literal["drop_oldest", "drop_newest", "block"]


class BoundedQueue(Generic[T]):
    """A FIFO of at most ``size`` items for one consumer task.

    When full, ``drop_oldest`` discards the oldest item (fresh sensor data matters more
    than stale data), ``drop_newest`` discards the new one, and ``block`` makes the
    producer wait. Every discarded item is counted in ``dropped``.
    """

    def __init__(self, name: str, size: int, overflow: Overflow) -> None:
        self.name = name
        self.size = size
        self.overflow = overflow
        self._items: deque[T] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.put_count = 0
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> bool:
        """Add ``item`` under the drop policies; False when it (or another) was dropped."""
        accepted = True
        if len(self._items) >= self.size:
            self.dropped += 1
            if self.overflow == "drop_oldest":
                self._items.popleft()
                accepted = False
            else:  # drop_newest, or block called without waiting
                return False
        self._items.append(item)
        self.put_count += 1
        self.high_water = max(self.high_water, len(self._items))
        self._not_empty.set()
        if len(self._items) >= self.size:
            self._not_full.clear()
        return accepted

    async def put(self, item: T) -> bool:
        if self.overflow == "block":
            while len(self._items) >= self.size:
                await self._not_full.wait()
        return self.put_nowait(item)

    async def get_batch(self, limit: int = 1_000_000) -> list[T]:
        """Wait for at least one item, then take up to ``limit`` of what is there."""
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        count = min(limit, len(self._items))
        batch = [self._items.popleft() for _ in range(count)]
        if not self._items:
            self._not_empty.clear()
        self._not_full.set()
        return batch

    def stats(self) -> dict[str, int]:
        return {
            "length": len(self._items),
            "size": self.size,
            "put": self.put_count,
            "dropped": self.dropped,
            "high_water": self.high_water,
        }
