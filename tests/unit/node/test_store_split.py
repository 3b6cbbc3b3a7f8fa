"""How the SST store splits a batch into ``beco_commit_batch`` calls (pure)."""

from __future__ import annotations

from beco_node.sst.store import split_calls


def test_distinct_users_go_in_one_call() -> None:
    assert split_calls([("a", "p1"), ("b", "p2"), ("c", "p3")]) == [[0, 1, 2]]


def test_a_users_later_entries_wait_in_order() -> None:
    keys = [("a", "p1"), ("b", "p2"), ("a", "p3"), ("c", "p4"), ("a", "p5"), ("b", "p6")]
    assert split_calls(keys) == [[0, 1, 3], [2, 5], [4]]


def test_a_proposal_queued_twice_waits_for_the_next_call() -> None:
    # The same proposal id twice: the second is answered as a duplicate of the first.
    assert split_calls([("a", "p1"), ("b", "p2"), ("a2", "p1")]) == [[0, 1], [2]]


def test_an_entry_that_waits_keeps_its_users_later_entries_behind_it() -> None:
    # ("b", "p1") waits for its proposal id; b's next change must not overtake it.
    assert split_calls([("a", "p1"), ("b", "p1"), ("b", "p2")]) == [[0], [1], [2]]


def test_nothing_to_split() -> None:
    assert split_calls([]) == []
