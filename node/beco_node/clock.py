"""Wall-clock milliseconds (one place, so tests can reason about it)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """The clock every service reads: wall milliseconds and a monotonic seconds counter.

    Tests pass a :class:`ManualClock` to :class:`~beco_node.services.runtime.Runtime`.
    """

    def now_ms(self) -> int:
        return now_ms()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock(Clock):
    """A clock that moves only when told to (``advance``)."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.ms = start_ms
        self.mono = 1000.0

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self.mono += seconds
