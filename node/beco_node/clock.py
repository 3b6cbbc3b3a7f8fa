"""Wall-clock milliseconds (one place, so tests can reason about it)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """The clock every service reads: wall milliseconds, a monotonic seconds counter, and
    ``sleep`` for the loops that wait on it (backoff, polling).

    Tests pass a :class:`ManualClock` to :class:`~beco_node.services.runtime.Runtime`.
    """

    def now_ms(self) -> int:
        return now_ms()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock(Clock):
    """A clock that moves only when told to (``advance``); ``sleep`` returns once the clock
    was advanced past its deadline."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.ms = start_ms
        self.mono = 1000.0
        self._order = itertools.count()
        # (deadline, order, future) of every pending sleep, earliest first
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.mono + max(seconds, 0.0), next(self._order), fut))
        await fut

    @property
    def sleeping(self) -> list[float]:
        """The remaining time of every pending sleep, shortest first."""
        return sorted(d - self.mono for d, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self.mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self.mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
