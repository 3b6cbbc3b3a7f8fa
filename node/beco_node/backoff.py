"""Bounded exponential backoff with jitter, and the SST's view of its database.

Pure: nothing here sleeps or does I/O. The callers (``services.startup``) sleep on the
runtime's injectable clock, so tests drive them with a ``ManualClock``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``first_s``, ``first_s * factor``, ... up to ``cap_s``; each one is shortened by
    up to ``jitter`` of itself (so clients that failed together do not retry together, and
    a delay never exceeds the cap). ``reset()`` after a success."""

    first_s: float
    cap_s: float
    factor: float = 2.0
    jitter: float = 0.5
    rand: Callable[[], float] = random.random  # in [0, 1)
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(f"need 0 < first_s <= cap_s, got {self.first_s}, {self.cap_s}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                f"need factor >= 1 and 0 <= jitter < 1, got {self.factor}, {self.jitter}"
            )
        self._next = self.first_s

    def next_delay(self) -> float:
        """The pause before the next try."""
        base = self._next
        self._next = min(base * self.factor, self.cap_s)
        return base * (1 - self.jitter * self.rand())

    def reset(self) -> None:
        self._next = self.first_s


@dataclass
class DatabaseHealth:
    """Whether the SST can answer, from the outcome of each check of its database, and when
    to check next: every ``poll_s`` while it answers, with ``backoff`` while it does not.

    A failure to connect (refused, unresolvable, connection closed) counts at once; a check
    that only timed out is forgiven ``slow_allowed`` times in a row, so one slow answer under
    load does not flap readiness. The first success makes it ready again.
    """

    poll_s: float
    backoff: Backoff
    slow_allowed: int = 1
    reason: str | None = None  # why the SST cannot serve; None: it can
    _slow: int = field(default=0, init=False, repr=False)

    def succeeded(self) -> float:
        self._slow = 0
        self.reason = None
        self.backoff.reset()
        return self.poll_s

    def failed(self, cause: str, *, timed_out: bool = False) -> float:
        self._slow = self._slow + 1 if timed_out else self.slow_allowed + 1
        if self._slow > self.slow_allowed:
            self.reason = f"the SST lost PostgreSQL ({cause})"
        return self.backoff.next_delay()
