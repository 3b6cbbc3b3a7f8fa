"""The validator's vote tally (pure)."""

from __future__ import annotations

import itertools

import pytest
from beco_node import tally
from beco_node.quorum import default_quorum


def test_decided_at_quorum_or_out_of_reach() -> None:
    t = tally.Tally(quorum=2, voters=3)
    assert not t.decided and t.pending == 3
    t = t.add_valid()
    assert not t.decided
    t = t.add_valid()
    assert t.reached and t.decided
    t = tally.Tally(quorum=2, voters=3).add_invalid("PERMISSION_DENIED").add_unreachable()
    assert t.decided and not t.reached
    assert t.failure_code() == "PERMISSION_DENIED"


@pytest.mark.parametrize("n", [1, 3, 4, 7])
def test_every_order_of_answers_decides_the_same(n: int) -> None:
    """Whatever order the answers arrive in, the tally decides exactly when the quorum is
    reached or out of reach, and a decided tally never changes its mind."""
    q = default_quorum(n)
    for answers in itertools.product("viu", repeat=n):
        t = tally.Tally(quorum=q, voters=n)
        decided_at = None
        for i, a in enumerate(answers):
            t = (
                t.add_valid()
                if a == "v"
                else t.add_invalid("")
                if a == "i"
                else t.add_unreachable()
            )
            if t.decided and decided_at is None:
                decided_at = i
                verdict = t.reached
        assert decided_at is not None
        assert verdict == (answers.count("v") >= q)


def test_a_definitive_failure_never_says_outcome_unknown() -> None:
    assert tally.Tally(quorum=2, voters=3).add_unreachable().failure_code() == "ABORTED"
    for code in tally.INDETERMINATE_CODES:
        assert tally.definitive_code(code) == "ABORTED"
    assert tally.definitive_code("NOT_FOUND") == "NOT_FOUND"
    invalid = tally.Tally(quorum=3, voters=3).add_invalid("").add_invalid("NOT_FOUND")
    assert invalid.add_invalid("NOT_FOUND").failure_code() == "NOT_FOUND"
