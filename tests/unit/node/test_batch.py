"""The pure batch core: the root over header digests, inclusion paths, what a voter signs."""

import hashlib

import pytest
from beco_node import batch
from beco_node.merkle import MerkleTree, leaf_hash


def digests(n: int) -> list[bytes]:
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


def test_root_is_the_rfc9162_root_over_the_digests() -> None:
    ds = digests(5)
    assert batch.root(ds) == MerkleTree(leaf_hash(d) for d in ds).root()
    assert batch.root(ds[:1]) == leaf_hash(ds[0])
    assert batch.root(ds) != batch.root(list(reversed(ds)))  # order matters
    with pytest.raises(ValueError):
        batch.root([])
    with pytest.raises(ValueError):
        batch.root([b"short"])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33])
def test_every_change_has_an_inclusion_path(n: int) -> None:
    ds = digests(n)
    r = batch.root(ds)
    for i, d in enumerate(ds):
        path = batch.inclusion_path(ds, i)
        assert batch.in_batch(d, i, n, path, r)
        assert not batch.in_batch(d, (i + 1) % n, n, path, r) or n == 1
        assert not batch.in_batch(hashlib.sha256(b"x").digest(), i, n, path, r)


def test_vote_signing_bytes_are_unambiguous() -> None:
    r = batch.root(digests(3))
    none = batch.vote_signing_bytes(r, [])
    one = batch.vote_signing_bytes(r, [batch.Rejection(1, "NOT_FOUND", "no user")])
    assert none != one
    # code/reason boundaries are length-prefixed
    a = batch.vote_signing_bytes(r, [batch.Rejection(1, "AB", "C")])
    b = batch.vote_signing_bytes(r, [batch.Rejection(1, "A", "BC")])
    assert a != b
    with pytest.raises(ValueError):  # one index twice, or out of order: ambiguous
        batch.vote_signing_bytes(r, [batch.Rejection(2, "X", ""), batch.Rejection(1, "X", "")])
    with pytest.raises(ValueError):
        batch.vote_signing_bytes(b"r", [])


def test_check_change_needs_a_quorum_that_did_not_reject_it() -> None:
    ds = digests(4)
    r = batch.root(ds)
    path = batch.inclusion_path(ds, 2)
    votes = [("a", frozenset()), ("b", frozenset({2})), ("c", frozenset({0}))]
    assert batch.check_change(ds[2], 2, 4, path, r, votes, 2) == ["a", "c"]
    with pytest.raises(ValueError, match="quorum is 3"):
        batch.check_change(ds[2], 2, 4, path, r, votes, 3)
    with pytest.raises(ValueError, match="not in the batch"):
        batch.check_change(ds[1], 2, 4, path, r, votes, 2)
    with pytest.raises(ValueError, match="two votes"):
        batch.check_change(ds[2], 2, 4, path, r, [*votes, ("a", frozenset())], 2)


# ---- Batcher: the one batching policy of the validator's rounds and the origins' forwards


def test_an_idle_batcher_starts_a_lone_item_at_once() -> None:
    b: batch.Batcher[str] = batch.Batcher()
    b.add("p1", 100)
    assert b.next_batch() == ["p1"]  # no wait for company
    assert b.rounds == 1 and not b.pending


def test_items_arriving_while_rounds_are_in_flight_make_up_the_next_batch() -> None:
    b: batch.Batcher[str] = batch.Batcher(max_rounds=2)
    b.add("p1", 1)
    assert b.next_batch() == ["p1"]
    b.add("p2", 1)
    assert b.next_batch() == ["p2"]  # a second round may start at once too
    for p in ("p3", "p4", "p5"):
        b.add(p, 1)
    assert b.next_batch() is None  # two rounds in flight: they wait
    b.done()
    assert b.next_batch() == ["p3", "p4", "p5"]
    assert b.next_batch() is None
    b.done()
    b.done()
    assert b.rounds == 0
    with pytest.raises(ValueError):
        b.done()


def test_a_batch_is_bounded_by_count_and_bytes() -> None:
    b: batch.Batcher[int] = batch.Batcher(max_rounds=3, max_count=3, max_bytes=100)
    for i in range(5):
        b.add(i, 10)
    assert b.next_batch() == [0, 1, 2]
    assert b.next_batch() == [3, 4]
    b.add(5, 60)
    b.add(6, 50)
    b.add(7, 500)  # one item alone may exceed the bytes
    b.done()
    assert b.next_batch() == [5]
    b.done()
    assert b.next_batch() == [6]
    b.done()
    assert b.next_batch() == [7]


def test_items_nobody_waits_for_are_dropped() -> None:
    b: batch.Batcher[str] = batch.Batcher(max_rounds=1)
    for p in ("gone", "p1", "gone", "p2"):
        b.add(p, 1)
    assert b.next_batch(lambda p: p != "gone") == ["p1", "p2"]
    b.done()
    b.add("gone", 1)
    assert b.next_batch(lambda p: p != "gone") is None and b.rounds == 0
