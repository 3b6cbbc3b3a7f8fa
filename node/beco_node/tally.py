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
from collections.abc import Iterable, Mapping
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
        return replace(self, invalid_codes=(*self.invalid_codes, _invalid_code(code)))

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


def _invalid_code(code: str) -> str:
    return code or "FAILED_PRECONDITION"


class BatchTally:
    """The tallies of a batch's changes, counted once per vote: every voter answers for
    the whole batch, so a change's tally is the votes counted minus its own rejections.
    ``tally(i)`` is the same ``Tally`` that folding each vote into change ``i`` gives
    (VALID, then INVALID codes in arrival order); its rules decide."""

    def __init__(self, quorum: int, voters: int, changes: int) -> None:
        self.quorum = quorum
        self.voters = voters
        self.changes = changes
        self.votes = 0  # batch votes counted (VALID or INVALID per change)
        self.unreachable = 0
        self.invalid: dict[int, list[str]] = {}  # change index -> its INVALID codes

    def add_vote(self, rejected: Mapping[int, str]) -> None:
        """One voter's batch vote: INVALID (with its code) for the changes ``rejected``
        names, VALID for every other (as ``batch.valid_voters`` reads a vote: an index
        outside the batch names no change)."""
        self.votes += 1
        for i, code in rejected.items():
            if 0 <= i < self.changes:
                self.invalid.setdefault(i, []).append(_invalid_code(code))

    def add_unreachable(self) -> None:
        self.unreachable += 1

    def tally(self, i: int) -> Tally:
        return self._of(self.invalid.get(i, ()))

    def tallies(self) -> list[Tally]:
        """``tally(i)`` for every change (those no vote rejected share one: it is frozen)."""
        clean = self._of(())
        return [
            self._of(self.invalid[i]) if i in self.invalid else clean for i in range(self.changes)
        ]

    def _of(self, codes: Iterable[str]) -> Tally:
        codes = tuple(codes)
        return Tally(
            quorum=self.quorum,
            voters=self.voters,
            valid=self.votes - len(codes),
            unreachable=self.unreachable,
            invalid_codes=codes,
        )

    @property
    def decided(self) -> bool:
        """Every change's tally is decided (changes no vote rejected share one tally)."""
        if len(self.invalid) < self.changes and not self._of(()).decided:
            return False
        return all(self.tally(i).decided for i in self.invalid)


def _most_common(codes: Iterable[str]) -> str:
    counts = collections.Counter(codes)
    return counts.most_common(1)[0][0] if counts else ""
