"""The validator's vote tally, as a pure value: when a proposal is decided, and how.

The validator feeds it each voter's answer as it arrives; it stops waiting as soon as
the tally is decided (``quorum`` VALID votes, or the quorum out of reach). What a
failed tally answers the client is decided here too: the most common INVALID code,
else ABORTED (votes missing or unreachable voters; the request definitively failed).
UNAVAILABLE and DEADLINE_EXCEEDED are never a definitive failure's code: clients
read them as "outcome unknown, re-send the same signed request" (docs/reliability.md).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from beco_node.quorum import can_still_reach

# Codes a client must treat as "the outcome is unknown" (never a definitive failure).
INDETERMINATE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})
# What a definitive failure says instead of an indeterminate code.
DEFINITIVE_FALLBACK = "ABORTED"


def definitive_code(code: str) -> str:
    """The code of a definitive failure: never one that means "outcome unknown"."""
    return DEFINITIVE_FALLBACK if not code or code in INDETERMINATE_CODES else code


@dataclass(frozen=True)
class Tally:
    quorum: int
    voters: int
    valid: int = 0
    unreachable: int = 0
    invalid_codes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def invalid(self) -> int:
        return len(self.invalid_codes)

    @property
    def pending(self) -> int:
        return self.voters - self.valid - self.invalid - self.unreachable

    def add_valid(self) -> Tally:
        return replace(self, valid=self.valid + 1)

    def add_invalid(self, code: str) -> Tally:
        return replace(self, invalid_codes=(*self.invalid_codes, code or "FAILED_PRECONDITION"))

    def add_unreachable(self) -> Tally:
        return replace(self, unreachable=self.unreachable + 1)

    @property
    def reached(self) -> bool:
        return self.valid >= self.quorum

    @property
    def decided(self) -> bool:
        """Nothing more to wait for: the quorum is reached or out of reach."""
        return self.reached or not can_still_reach(self.quorum, self.valid, self.pending)

    def failure_code(self) -> str:
        """The status of a failed tally: the most common INVALID code, else ABORTED."""
        return definitive_code(_most_common(self.invalid_codes))


def _most_common(codes: Iterable[str]) -> str:
    counts = collections.Counter(codes)
    return counts.most_common(1)[0][0] if counts else ""
