"""SstStore on a real PostgreSQL: commits, idempotency, sequencing, atomicity, proofs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from beco_node.keys import public_key_bytes
from beco_node.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)
from beco_node.sst.schema import SCHEMA_VERSION, migrate
from beco_node.sst.store import (
    CommitEntry,
    CommitResult,
    ProposalConflictError,
    ProposalFailedError,
    SequenceError,
    SstStore,
    StoredCommit,
    StoreError,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import FakeClock, make_entry

pytestmark = pytest.mark.postgres

Entry = Callable[..., CommitEntry]


async def _counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("users", "changes", "leaves", "tree_heads")
        }
    finally:
        await conn.close()


async def test_empty_store_has_signed_empty_tree_head(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        sth = store.tree_head()
        assert (sth.tree_size, sth.root_hash) == (0, EMPTY_ROOT)
        verify_tree_head(public_key_bytes(key), sth)
        assert await store.list_user_ids() == []
    finally:
        await store.close()
    # Opening again migrates nothing and keeps the same head.
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        assert store.tree_head() == sth
    finally:
        await store.close()


async def test_commit_happy_path_and_proofs(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock, entry: Entry
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        heads = [store.tree_head()]
        entries = [entry("alice", 1), entry("bob", 1), entry("alice", 2), entry("alice", 3)]
        for i, e in enumerate(entries):
            res = await store.commit(e)
            assert (res.leaf_index, res.duplicate, res.sequence) == (i, False, e.sequence)
            assert res.tree_head == store.tree_head()
            assert res.tree_head.tree_size == i + 1
            assert res.tree_head.timestamp_ms > heads[-1].timestamp_ms  # the injected clock
            heads.append(res.tree_head)

        assert await store.get_user("alice") == (3, b"state alice 3")
        assert await store.get_user("bob") == (1, b"state bob 1")
        assert await store.get_user("carol") is None
        assert await store.list_user_ids() == ["alice", "bob"]
        assert sorted(await store.load_all_users()) == [
            ("alice", 3, b"state alice 3"),
            ("bob", 1, b"state bob 1"),
        ]
        for page in (1, 2, 5_000):  # paged: every user once, in id order
            assert [u async for u in store.iter_users(page=page)] == [
                ("alice", 3, b"state alice 3"),
                ("bob", 1, b"state bob 1"),
            ]
        hist = await store.history("alice")
        assert [(c.sequence, c.leaf_index, c.kind) for c in hist] == [
            (1, 0, "create_user"),
            (2, 2, "set_first_name"),
            (3, 3, "set_first_name"),
        ]
        assert hist[0].leaf_data == b"leaf alice 1"
        assert hist[2].committed_ms == 1_003

        # Every proof the store serves verifies offline against a signed tree head.
        pub = public_key_bytes(key)
        for sth in heads:
            verify_tree_head(pub, sth)
            for i in range(sth.tree_size):
                proof = store.inclusion_proof(i, sth.tree_size)
                verify_inclusion(
                    leaf_hash(entries[i].leaf_data), i, sth.tree_size, proof, sth.root_hash
                )
                assert store.leaf_hash(i) == leaf_hash(entries[i].leaf_data)
            for old in heads:
                if old.tree_size <= sth.tree_size:
                    proof = store.consistency_proof(old.tree_size, sth.tree_size)
                    verify_consistency(
                        old.tree_size, sth.tree_size, old.root_hash, sth.root_hash, proof
                    )
        assert await store.tree_head_at(2) == heads[2]

        for bad in [lambda: store.inclusion_proof(4, 4), lambda: store.inclusion_proof(0, 5)]:
            with pytest.raises(ValueError, match="out of range"):
                bad()
        with pytest.raises(ValueError, match="out of range"):
            store.consistency_proof(2, 5)
        with pytest.raises(ValueError, match="out of range"):
            store.leaf_hash(4)
    finally:
        await store.close()
    assert await _counts(dsn) == {"users": 2, "changes": 4, "leaves": 4, "tree_heads": 5}


async def test_duplicate_proposal_is_stored_once(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock, entry: Entry
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        first = await store.commit(entry("alice", 1))
        await store.commit(entry("alice", 2))
        again = await store.commit(entry("alice", 1))
        assert again.duplicate
        assert (again.leaf_index, again.tree_head) == (first.leaf_index, first.tree_head)
        assert store.tree_head().tree_size == 2
        # Same id, different content: refused, nothing written.
        forged = CommitEntry(**{**entry("alice", 1).__dict__, "leaf_data": b"other"})
        with pytest.raises(ProposalConflictError):
            await store.commit(forged)
        assert store.tree_head().tree_size == 2
    finally:
        await store.close()
    assert await _counts(dsn) == {"users": 1, "changes": 2, "leaves": 2, "tree_heads": 3}


async def test_wrong_sequence_rejected_and_nothing_written(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock, entry: Entry
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(entry("alice", 1))
        head = store.tree_head()
        before = await _counts(dsn)
        cases = [
            (entry("alice", 3), 2, "expected 2, got 3"),
            (entry("alice", 1, tag="again"), 2, "already exists"),
            (entry("bob", 2), 1, "does not exist"),
        ]
        for e, expected, text in cases:
            with pytest.raises(SequenceError, match=text) as info:
                await store.commit(e)
            assert (info.value.expected, info.value.got) == (expected, e.sequence)
        with pytest.raises(ValueError):
            await store.commit(entry("alice", 0))
        assert store.tree_head() == head
        assert await _counts(dsn) == before
        assert await store.get_user("alice") == (1, b"state alice 1")
        # The log continues densely afterwards.
        res = await store.commit(entry("alice", 2))
        assert res.leaf_index == 1
    finally:
        await store.close()


async def test_failure_inside_the_transaction_leaves_nothing(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock, entry: Entry
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    admin = await asyncpg.connect(dsn)
    try:
        await store.commit(entry("alice", 1))
        await store.commit(entry("alice", 2))
        head = store.tree_head()
        before = await _counts(dsn)
        # The tree-head insert is the LAST write of a commit: make it fail once the user
        # row, the change and the leaf have already been written in the same transaction.
        await admin.execute(
            """
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON tree_heads
              FOR EACH ROW WHEN (NEW.tree_size = 3) EXECUTE FUNCTION refuse();
            """
        )
        with pytest.raises(StoreError, match="injected failure"):
            await store.commit(entry("alice", 3))
        assert await _counts(dsn) == before
        assert await store.get_user("alice") == (2, b"state alice 2")
        assert store.tree_head() == head
        with pytest.raises(ValueError):
            store.inclusion_proof(2, 3)
        # A database constraint (the state is NOT NULL) also aborts everything.
        with pytest.raises(StoreError):
            await store.commit(CommitEntry(**{**entry("alice", 3).__dict__, "state": None}))
        assert await _counts(dsn) == before

        await admin.execute("DROP TRIGGER refuse ON tree_heads")
        res = await store.commit(entry("alice", 3))
        assert (res.leaf_index, res.duplicate) == (2, False)
        proof = store.inclusion_proof(2, 3)
        verify_inclusion(leaf_hash(b"leaf alice 3"), 2, 3, proof, res.tree_head.root_hash)
    finally:
        await admin.close()
        await store.close()


async def test_concurrent_commits_to_one_user_serialise(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(make_entry("alice", 1))
        # 50 updates in flight at once, each with its correct sequence (as the validator
        # sends them): all commit, in order, with dense leaf indexes.
        results = await asyncio.gather(
            *(store.commit(make_entry("alice", s)) for s in range(2, 52))
        )
        assert [r.sequence for r in results] == list(range(2, 52))
        assert sorted(r.leaf_index for r in results) == list(range(1, 51))
        assert not any(r.duplicate for r in results)

        # 20 writers racing read-modify-write on one user: each retries on SequenceError
        # until it lands; none is lost.
        async def writer(n: int) -> int:
            while True:
                current = await store.get_user("alice")
                assert current is not None
                try:
                    res = await store.commit(make_entry("alice", current[0] + 1, tag=f"-w{n}"))
                except SequenceError:
                    continue
                return res.sequence

        landed = await asyncio.gather(*(writer(n) for n in range(20)))
        assert sorted(landed) == list(range(52, 72))
        assert (await store.get_user("alice") or (0,))[0] == 71
        hist = await store.history("alice")
        assert [c.sequence for c in hist] == list(range(1, 72))
        assert sorted(c.leaf_index for c in hist) == list(range(71))
        assert {c.proposal_id.rsplit("-w", 1)[-1] for c in hist[51:]} == {str(n) for n in range(20)}
        assert store.tree_head().tree_size == 71
    finally:
        await store.close()


async def test_a_refused_entry_does_not_fail_its_batch(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(make_entry("alice", 1))
        bad = CommitEntry(**{**make_entry("bob", 1).__dict__, "state": None})
        # Queued together, these go into one transaction first; the bad one is retried alone.
        results = await asyncio.gather(
            store.commit(make_entry("alice", 2)),
            store.commit(bad),
            store.commit(make_entry("alice", 3)),
            store.commit(make_entry("alice", 3, tag="late")),  # wrong sequence by then
            store.commit(make_entry("alice", 2)),  # the same proposal again
            return_exceptions=True,
        )
        ok2, err, ok3, seq_err, dup = results
        assert isinstance(ok2, CommitResult) and isinstance(ok3, CommitResult)
        assert (ok2.leaf_index, ok3.leaf_index, ok2.duplicate) == (1, 2, False)
        assert isinstance(err, StoreError)
        assert isinstance(seq_err, SequenceError)
        assert isinstance(dup, CommitResult) and dup.duplicate and dup.leaf_index == 1
        assert dup.tree_head == ok2.tree_head
        assert await store.get_user("bob") is None
        assert store.tree_head().tree_size == 3
        assert await _counts(dsn) == {"users": 1, "changes": 3, "leaves": 3, "tree_heads": 4}
    finally:
        await store.close()


async def test_close_finishes_queued_commits(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    pending = [asyncio.ensure_future(store.commit(make_entry(f"u{i}", 1))) for i in range(10)]
    await asyncio.sleep(0)
    await store.close()
    assert [(await p).leaf_index for p in pending] == list(range(10))
    with pytest.raises(StoreError, match="closed"):
        await store.commit(make_entry("late", 1))


async def test_two_writers_cannot_fork_the_log(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    # Two SSTs on one database (a misconfiguration): the database constraints keep one
    # dense log; a writer with a stale tree is refused, catches up, and goes on.
    a = await SstStore.open(dsn, key, clock=clock)
    b = await SstStore.open(dsn, key, clock=clock)
    try:
        assert (await a.commit(make_entry("alice", 1))).leaf_index == 0
        with pytest.raises(StoreError, match="nothing written"):
            await b.commit(make_entry("bob", 1))  # b still thinks leaf 0 is free
        res = await b.commit(make_entry("bob", 1))
        assert (res.leaf_index, res.duplicate) == (1, False)
        assert b.tree_head().tree_size == 2
        dup = await b.commit(make_entry("alice", 1))
        assert dup.duplicate and dup.leaf_index == 0
        with pytest.raises(StoreError):
            await a.commit(make_entry("carol", 1))
        assert (await a.commit(make_entry("carol", 1))).leaf_index == 2
        proof = a.consistency_proof(2, 3)
        verify_consistency(2, 3, b.tree_head().root_hash, a.tree_head().root_hash, proof)
    finally:
        await a.close()
        await b.close()
    assert await _counts(dsn) == {"users": 3, "changes": 3, "leaves": 3, "tree_heads": 4}


async def test_concurrent_first_opens_agree(dsn: str, key: Ed25519PrivateKey) -> None:
    stores = await asyncio.gather(*(SstStore.open(dsn, key) for _ in range(3)))
    try:
        assert len({s.tree_head() for s in stores}) == 1
    finally:
        for s in stores:
            await s.close()


async def test_tree_head_timestamps_never_go_backwards(dsn: str, key: Ed25519PrivateKey) -> None:
    readings = iter([5_000, 4_000, 6_000, 1_000, 7_000] + [8_000] * 10)
    store = await SstStore.open(dsn, key, clock=lambda: next(readings))
    try:
        stamps = [store.tree_head().timestamp_ms]
        for seq in range(1, 5):
            stamps.append((await store.commit(make_entry("alice", seq))).tree_head.timestamp_ms)
        assert stamps == [5_000, 5_000, 6_000, 6_000, 7_000]
    finally:
        await store.close()


async def test_a_batch_signs_one_tree_head_and_a_refused_entry_is_answered_alone(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(make_entry("alice", 1))
        await store.record_failure("p-dave-1", "ABORTED", "no quorum")
        heads_before = (await _counts(dsn))["tree_heads"]
        # Queued together: one call; two refusals (wrong sequence, recorded failure) are
        # answered alone and the other three commit under ONE signed head.
        bob, seq_err, carol, failed, erin = await asyncio.gather(
            store.commit(make_entry("bob", 1)),
            store.commit(make_entry("alice", 3)),
            store.commit(make_entry("carol", 1)),
            store.commit(make_entry("dave", 1)),
            store.commit(make_entry("erin", 1)),
            return_exceptions=True,
        )
        assert isinstance(seq_err, SequenceError) and seq_err.expected == 2
        assert isinstance(failed, ProposalFailedError)
        ok = [bob, carol, erin]
        assert all(isinstance(r, CommitResult) and not r.duplicate for r in ok)
        results = [r for r in ok if isinstance(r, CommitResult)]
        assert [r.leaf_index for r in results] == [1, 2, 3]
        head = store.tree_head()
        assert head.tree_size == 4 and all(r.tree_head == head for r in results)
        assert (await _counts(dsn))["tree_heads"] == heads_before + 1
        assert await store.tree_head_at(2) is None  # no head inside a batch
        pub = public_key_bytes(key)
        verify_tree_head(pub, head)
        for r in results:  # every leaf of the batch proves against the batch's head
            data = make_entry(r.user_id, 1).leaf_data
            proof = store.inclusion_proof(r.leaf_index, head.tree_size)
            verify_inclusion(leaf_hash(data), r.leaf_index, head.tree_size, proof, head.root_hash)
        # The stored outcome and a re-delivery name the same head.
        found = await store.outcome("p-carol-1")
        assert isinstance(found, StoredCommit) and found.result.tree_head == head
        again = await store.commit(make_entry("carol", 1))
        assert again.duplicate and (again.leaf_index, again.tree_head) == (2, head)
        assert await store.get_user("dave") is None
        # Two changes of one user queued together: two calls in one transaction, in order,
        # each change under the first head that covers it.
        two, three = await asyncio.gather(
            store.commit(make_entry("bob", 2)), store.commit(make_entry("bob", 3))
        )
        assert (two.leaf_index, two.tree_head.tree_size) == (4, 5)
        assert (three.leaf_index, three.tree_head.tree_size) == (5, 6)
        found = await store.outcome("p-bob-2")
        assert isinstance(found, StoredCommit) and found.result.tree_head == two.tree_head
    finally:
        await store.close()


async def test_a_log_written_by_schema_3_migrates_and_stays_provable(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    # A database as the code before migration 4 wrote it: one beco_commit call and one
    # signed tree head per change.
    old_entries = [make_entry("alice", 1), make_entry("bob", 1), make_entry("alice", 2)]
    tree = MerkleTree()
    old_heads = [sign_tree_head(key, 0, tree.root(), 1_000)]
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrate(conn, upto=3) == 3
        await conn.execute(
            "INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)"
            " VALUES (0, $1, $2, $3)",
            old_heads[0].root_hash,
            old_heads[0].timestamp_ms,
            old_heads[0].signature,
        )
        for i, e in enumerate(old_entries):
            lh = leaf_hash(e.leaf_data)
            tree.append(lh)
            sth = sign_tree_head(key, i + 1, tree.root(), 1_001 + i)
            row = await conn.fetchrow(
                "SELECT * FROM beco_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                e.proposal_id,
                e.user_id,
                e.sequence,
                e.kind,
                e.state,
                i,
                lh,
                e.leaf_data,
                e.committed_ms,
                sth.root_hash,
                sth.timestamp_ms,
                sth.signature,
            )
            assert row is not None and row["o_outcome"] == "committed"
            old_heads.append(sth)
    finally:
        await conn.close()

    store = await SstStore.open(dsn, key, clock=clock)  # migrates, loads, verifies
    try:
        assert store.tree_head() == old_heads[-1]
        # An old change keeps its own per-commit head, and proves against it.
        found = await store.outcome("p-bob-1")
        assert isinstance(found, StoredCommit)
        assert (found.result.leaf_index, found.result.tree_head) == (1, old_heads[2])
        proof = store.inclusion_proof(1, 2)
        verify_inclusion(leaf_hash(old_entries[1].leaf_data), 1, 2, proof, old_heads[2].root_hash)
        # New commits after the migration: one batch, one head.
        new_entries = [make_entry("carol", 1), make_entry("alice", 3), make_entry("bob", 2)]
        results = await asyncio.gather(*(store.commit(e) for e in new_entries))
        head = store.tree_head()
        assert head.tree_size == 6 and {r.tree_head for r in results} == {head}
        pub = public_key_bytes(key)
        verify_tree_head(pub, head)
        for r, e in zip(results, new_entries, strict=True):
            proof = store.inclusion_proof(r.leaf_index, 6)
            verify_inclusion(leaf_hash(e.leaf_data), r.leaf_index, 6, proof, head.root_hash)
        for old in old_heads:  # every head a client kept from before is extended
            proof = store.consistency_proof(old.tree_size, 6)
            verify_consistency(old.tree_size, 6, old.root_hash, head.root_hash, proof)
    finally:
        await store.close()
    assert await _counts(dsn) == {"users": 3, "changes": 6, "leaves": 6, "tree_heads": 5}
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        assert await conn.fetchval("SELECT to_regproc('beco_commit')") is None
    finally:
        await conn.close()
    store = await SstStore.open(dsn, key, clock=clock)  # and the mixed log verifies again
    try:
        assert store.tree_head() == head
    finally:
        await store.close()


async def test_commit_many_answers_each_entry_as_commit_does(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(make_entry("alice", 1))
        bad = CommitEntry(**{**make_entry("bob", 1).__dict__, "state": None})
        malformed = CommitEntry(**{**make_entry("carol", 1).__dict__, "sequence": 0})
        # One call, one transaction first; the bad entry is retried alone, the others kept.
        results = await store.commit_many(
            [
                make_entry("alice", 2),
                bad,
                make_entry("alice", 3),
                make_entry("alice", 3, tag="late"),  # wrong sequence by then
                make_entry("alice", 2),  # the same proposal again
                malformed,
            ]
        )
        ok2, err, ok3, seq_err, dup, value_err = results
        assert isinstance(ok2, CommitResult) and isinstance(ok3, CommitResult)
        assert (ok2.leaf_index, ok3.leaf_index, ok2.duplicate) == (1, 2, False)
        assert isinstance(err, StoreError)
        assert isinstance(seq_err, SequenceError)
        assert isinstance(dup, CommitResult) and dup.duplicate and dup.leaf_index == 1
        assert isinstance(value_err, ValueError)
        assert await store.get_user("bob") is None and await store.get_user("carol") is None
        assert store.tree_head().tree_size == 3
        assert await _counts(dsn) == {"users": 1, "changes": 3, "leaves": 3, "tree_heads": 4}
        assert await store.commit_many([]) == []
    finally:
        await store.close()
    closed = await store.commit_many([make_entry("late", 1)])
    assert len(closed) == 1 and isinstance(closed[0], StoreError)
    assert "closed" in str(closed[0])


async def test_cancelling_commit_many_does_not_cancel_the_writes(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        call = asyncio.ensure_future(store.commit_many([make_entry(f"u{i}", 1) for i in range(5)]))
        await asyncio.sleep(0)  # queued
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await store.commit(make_entry("after", 1))).leaf_index == 5
        assert [await store.get_user(f"u{i}") is not None for i in range(5)] == [True] * 5
    finally:
        await store.close()


async def test_a_commit_costs_no_session_reset(
    dsn: str,
    key: Ed25519PrivateKey,
    clock: FakeClock,
    entry: Entry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Releasing the writer's connection sends PostgreSQL nothing (asyncpg's default reset
    statement would be one more round trip before each commit is answered); a transaction
    left open is still rolled back."""
    resets: list[str] = []
    default = asyncpg.Connection.get_reset_query

    def counting(self: asyncpg.Connection) -> str:
        resets.append("reset")
        return default(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(asyncpg.Connection, "get_reset_query", counting)
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        await store.commit(entry("alice", 1))
        await store.commit(entry("alice", 2))
        async with store._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()  # left open on purpose
            await conn.execute("INSERT INTO users VALUES ('x', 1, '', 0)")
        async with store._pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM users WHERE user_id = 'x'") == 0
        assert resets == []
    finally:
        await store.close()
    assert (await _counts(dsn))["changes"] == 2


async def test_the_commit_function_keeps_generic_plans(dsn: str) -> None:
    # Re-planning its statements on every call cost more than running them (migration 5).
    # A later CREATE OR REPLACE of the function drops the setting unless it says it again.
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        config = await conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE proname = 'beco_commit_batch'"
        )
        assert config == ["plan_cache_mode=force_generic_plan"]
    finally:
        await conn.close()
