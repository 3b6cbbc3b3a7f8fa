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


@pytest.mark.parametrize("voters", [1, 3, 4, 5])
def test_batch_tally_is_the_per_change_fold(voters: int) -> None:
    """Counting a batch once per vote gives every change exactly the tally (and decision)
    that folding each vote into each change's own Tally gives."""
    import random

    rnd = random.Random(voters)
    q = default_quorum(voters)
    codes = ["", "PERMISSION_DENIED", "FAILED_PRECONDITION", "INVALID_ARGUMENT"]
    for _ in range(300):
        n = rnd.randint(1, 6)
        bt = tally.BatchTally(q, voters, n)
        fold = [tally.Tally(quorum=q, voters=voters) for _ in range(n)]
        for _ in range(rnd.randint(0, voters)):
            if rnd.random() < 0.2:
                bt.add_unreachable()
                fold = [t.add_unreachable() for t in fold]
            else:
                rej = {i: rnd.choice(codes) for i in range(n) if rnd.random() < 0.3}
                bt.add_vote(rej)
                fold = [
                    t.add_invalid(rej[i]) if i in rej else t.add_valid() for i, t in enumerate(fold)
                ]
            assert [bt.tally(i) for i in range(n)] == fold == bt.tallies()
            assert bt.decided == all(t.decided for t in fold)


def test_batch_tally_a_rejection_outside_the_batch_names_no_change() -> None:
    bt = tally.BatchTally(2, 3, 2)
    bt.add_vote({2: "PERMISSION_DENIED"})
    assert [bt.tally(i).valid for i in range(2)] == [1, 1]
