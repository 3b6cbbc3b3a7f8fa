"""Durability: PostgreSQL restarts, SST restarts and a tampered log."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from beco_node.keys import public_key_bytes
from beco_node.merkle import leaf_hash, verify_consistency, verify_inclusion, verify_tree_head
from beco_node.pg import EmbeddedPostgres
from beco_node.sst.store import SstStore, StoreIntegrityError, StoreUnavailableError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import FakeClock, make_entry

pytestmark = pytest.mark.postgres


async def test_postgres_restart_keeps_every_acknowledged_commit(
    pg_dir: Path, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    pg = EmbeddedPostgres(pg_dir)
    dsn = await pg.start()
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        acked = [await store.commit(make_entry(f"u{i % 3}", i // 3 + 1)) for i in range(12)]
        head = store.tree_head()
        proofs = [store.inclusion_proof(i, head.tree_size) for i in range(head.tree_size)]

        await pg.stop()
        with pytest.raises(StoreUnavailableError):
            await store.commit(make_entry("u0", 5))
        assert store.tree_head() == head
        pid_before = pg.pid
        assert await pg.start() == dsn  # same port: the SST keeps its DSN
        assert pg.pid != pid_before

        # The same store carries on over fresh connections; the retried entry lands once.
        res = await store.commit(make_entry("u0", 5))
        assert (res.leaf_index, res.duplicate) == (12, False)
        assert await store.get_user("u1") == (4, b"state u1 4")
        head2 = store.tree_head()
    finally:
        await store.close()

    # A new SST process (store) after another restart sees exactly the same log.
    await pg.stop()
    dsn = await pg.start()
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        assert store.tree_head() == head2
        for r in acked:
            hist = await store.history(r.user_id)
            assert any(
                c.proposal_id == r.proposal_id and c.leaf_index == r.leaf_index for c in hist
            )
            assert (await store.commit(make_entry(r.user_id, r.sequence))).duplicate
        assert [store.inclusion_proof(i, head.tree_size) for i in range(head.tree_size)] == proofs
        verify_tree_head(public_key_bytes(key), head2)
        verify_consistency(
            head.tree_size,
            head2.tree_size,
            head.root_hash,
            head2.root_hash,
            store.consistency_proof(head.tree_size, head2.tree_size),
        )
        verify_inclusion(
            leaf_hash(b"leaf u0 5"), 12, 13, store.inclusion_proof(12, 13), head2.root_hash
        )
    finally:
        await store.close()
        await pg.stop()
    assert not pg.running


async def test_tampered_log_refuses_to_start(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    for i in range(5):
        await store.commit(make_entry("alice", i + 1))
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        # Another key cannot take over the log.
        with pytest.raises(StoreIntegrityError, match="not signed by this SST"):
            await SstStore.open(dsn, Ed25519PrivateKey.generate(), clock=clock)
        # Leaf data changed behind the SST's back.
        await conn.execute("UPDATE leaves SET leaf_data = 'forged' WHERE leaf_index = 2")
        with pytest.raises(StoreIntegrityError, match="leaf 2"):
            await SstStore.open(dsn, key, clock=clock)
        # ... with its hash updated too: the root no longer matches the signed head.
        await conn.execute(
            "UPDATE leaves SET leaf_hash = $1 WHERE leaf_index = 2", leaf_hash(b"forged")
        )
        with pytest.raises(StoreIntegrityError, match="root does not match"):
            await SstStore.open(dsn, key, clock=clock)
        # Dropping the newest tree head: sizes disagree.
        await conn.execute(
            "UPDATE leaves SET leaf_data = $1, leaf_hash = $2 WHERE leaf_index = 2",
            b"leaf alice 3",
            leaf_hash(b"leaf alice 3"),
        )
        await conn.execute("DELETE FROM tree_heads WHERE tree_size = 5")
        with pytest.raises(StoreIntegrityError, match="size 4"):
            await SstStore.open(dsn, key, clock=clock)
    finally:
        await conn.close()


async def test_leaf_indexes_cannot_have_gaps(dsn: str, key: Ed25519PrivateKey) -> None:
    store = await SstStore.open(dsn, key)
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO leaves (leaf_index, leaf_hash, leaf_data) VALUES (0, $1, 'a')", bytes(32)
        )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO leaves (leaf_index, leaf_hash, leaf_data) VALUES (2, $1, 'c')",
                bytes(32),
            )
    finally:
        await conn.close()
