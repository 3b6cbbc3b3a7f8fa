"""Durable outcomes in the SstStore: failures recorded under the commit lock, outcome
lookups, catch-up by log position (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from beco_node.sst.store import (
    FailedRecord,
    ProposalFailedError,
    SstStore,
    StoredCommit,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import FakeClock, make_entry

pytestmark = pytest.mark.postgres


async def test_a_failed_proposal_never_commits_even_after_a_restart(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(make_entry("u", 1))
        late = make_entry("u", 2)
        rec = await store.record_failure(late.proposal_id, "ABORTED", "quorum not reached")
        assert isinstance(rec, FailedRecord) and rec.code == "ABORTED"
        with pytest.raises(ProposalFailedError) as ei:
            await store.commit(late)
        assert ei.value.record.reason == "quorum not reached"
        # the first reason stays
        again = await store.record_failure(late.proposal_id, "UNAUTHENTICATED", "other")
        assert isinstance(again, FailedRecord) and again.reason == "quorum not reached"
    finally:
        await store.close()
    store = await SstStore.open(dsn, key, clock=clock)  # the guard is in the database
    try:
        with pytest.raises(ProposalFailedError):
            await store.commit(make_entry("u", 2))
        assert store.tree_head().tree_size == 1
        # the user's next change still commits at sequence 2
        res = await store.commit(make_entry("u", 2, tag="-other"))
        assert res.sequence == 2 and not res.duplicate
    finally:
        await store.close()


async def test_recording_a_failure_after_the_commit_answers_the_commit(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        res = await store.commit(make_entry("u", 1))
        found = await store.record_failure(res.proposal_id, "ABORTED", "too late")
        assert isinstance(found, StoredCommit)
        assert found.result.leaf_index == res.leaf_index
        assert found.result.tree_head == res.tree_head
        looked = await store.outcome(res.proposal_id)
        assert isinstance(looked, StoredCommit) and looked.result.sequence == 1
        assert await store.outcome("never-seen") is None
    finally:
        await store.close()


async def test_commit_and_failure_race_one_wins_for_good(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    """Each proposal races a commit against a failure record: whichever the database
    serialised first decides, and both callers learn the same outcome."""
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        for i in range(20):
            entry = make_entry(f"r{i}", 1)
            committed, failed = await asyncio.gather(
                store.commit(entry),
                store.record_failure(entry.proposal_id, "ABORTED", "raced"),
                return_exceptions=True,
            )
            final = await store.outcome(entry.proposal_id)
            if isinstance(committed, ProposalFailedError):
                assert isinstance(failed, FailedRecord) and isinstance(final, FailedRecord)
            else:
                assert not isinstance(committed, BaseException)
                assert isinstance(failed, StoredCommit) and isinstance(final, StoredCommit)
                assert final.result.leaf_index == committed.leaf_index
    finally:
        await store.close()


async def test_changed_users_by_log_position(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        for e in [make_entry("a", 1), make_entry("b", 1), make_entry("a", 2), make_entry("c", 1)]:
            await store.commit(e)
        users, nxt = await store.changed_users(0)
        assert nxt == 4
        assert [(u, s) for u, s, _ in users] == [("a", 2), ("b", 1), ("c", 1)]
        users, nxt = await store.changed_users(2, limit=1)
        assert (nxt, [(u, s) for u, s, _ in users]) == (3, [("a", 2)])
        assert await store.changed_users(4) == ([], 4)
    finally:
        await store.close()


async def test_failure_records_are_pruned_by_their_requests_signed_time(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        old, recent, unknown = make_entry("a", 1), make_entry("b", 1), make_entry("c", 1)
        await store.record_failure(old.proposal_id, "ABORTED", "x", signed_ms=1_000)
        await store.record_failure(recent.proposal_id, "ABORTED", "x", signed_ms=5_000)
        await store.record_failure(unknown.proposal_id, "ABORTED", "x")  # no signed time
        assert await store.prune_failures(1_000) == 0  # strictly before the cut-off
        with pytest.raises(ProposalFailedError):
            await store.commit(old)
        assert await store.prune_failures(1_001, batch=1) == 1
        assert await store.outcome(old.proposal_id) is None
        assert isinstance(await store.outcome(recent.proposal_id), FailedRecord)
        assert isinstance(await store.outcome(unknown.proposal_id), FailedRecord)
        # many at once, in several batches; a record without a signed time stays
        assert await store.prune_failures(10**15, batch=1) == 1
        assert isinstance(await store.outcome(unknown.proposal_id), FailedRecord)
        with pytest.raises(ProposalFailedError):
            await store.commit(unknown)
    finally:
        await store.close()
