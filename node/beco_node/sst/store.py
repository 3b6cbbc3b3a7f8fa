"""SstStore: the SST's users, changes and Merkle log in PostgreSQL (asyncpg), one writer.

Commit path: under an asyncio lock (one commit at a time, so leaf indexes are
dense), the new leaf is appended to the in-memory ``MerkleTree``, the new root is
signed, and ``beco_commit`` (see ``schema.py``) writes user state, change, leaf and
tree head in ONE statement, hence one transaction and one round trip. If that
raises, the tree is truncated back and nothing is published: the database rolled
back the whole statement. A commit that fails on a broken connection has an unknown
outcome, so the store re-reads the log tail before the next commit and a retry of
the same entry returns the stored result (idempotent on ``proposal_id``).

The published tree head moves only after the database acknowledged the commit, and
proof requests are bounded by it, so readers never see an uncommitted leaf.

Start-up: migrations, then every leaf hash is loaded (about 0.1 s per 100k leaves),
leaf data are checked against their hashes in SQL, and the recomputed root must
equal the latest stored signed tree head, signed by our key. Otherwise the store
refuses to start with ``StoreIntegrityError``: the log was altered outside the SST.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beco_node.keys import public_key_bytes
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, sign_tree_head, verify_tree_head
from beco_node.merkle.tree import MerkleTree
from beco_node.merkle.verify import ProofError
from beco_node.sst.records import (
    ChangeRecord,
    CommitEntry,
    CommitResult,
    ProposalConflictError,
    SequenceError,
    StoreError,
    StoreIntegrityError,
    StoreUnavailableError,
)
from beco_node.sst.schema import migrate

__all__ = [
    "ChangeRecord",
    "CommitEntry",
    "CommitResult",
    "ProposalConflictError",
    "SequenceError",
    "SstStore",
    "StoreError",
    "StoreIntegrityError",
    "StoreUnavailableError",
]

Clock = Callable[[], int]

# Errors that mean "the database is not reachable", as opposed to a rejected statement.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


# A commit whose connection broke is retried (it is idempotent) after these pauses.
_RETRY_PAUSES_S = (0.05, 0.5, 0.0)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _sth(row: Any) -> SignedTreeHead:
    return SignedTreeHead(
        tree_size=row["tree_size"],
        root_hash=bytes(row["root_hash"]),
        timestamp_ms=row["timestamp_ms"],
        signature=bytes(row["signature"]),
    )


class SstStore:
    """See the module docstring. Create with ``await SstStore.open(dsn, key)``."""

    def __init__(self, pool: asyncpg.Pool, signing_key: Ed25519PrivateKey, clock: Clock) -> None:
        self._pool = pool
        self._key = signing_key
        self._public_key = public_key_bytes(signing_key)
        self._clock = clock
        self._tree = MerkleTree()
        self._sth: SignedTreeHead | None = None
        self._lock = asyncio.Lock()
        self._stale = False  # the log tail must be re-read before the next commit

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        dsn: str,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Clock = wall_clock_ms,
        pool_size: int = 10,
        verify_leaf_data: bool = True,
    ) -> SstStore:
        """Connect, migrate, load and verify the log (see module docstring)."""
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=pool_size, command_timeout=60
            )
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool, signing_key, clock)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await store._load(verify_leaf_data=verify_leaf_data)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def _load(self, *, verify_leaf_data: bool) -> None:
        async with self._pool.acquire() as conn:
            hashes = await conn.fetch("SELECT leaf_hash FROM leaves ORDER BY leaf_index")
            tree = MerkleTree(bytes(r["leaf_hash"]) for r in hashes)
            if verify_leaf_data:
                bad = await conn.fetchval(
                    "SELECT min(leaf_index) FROM leaves"
                    " WHERE leaf_hash <> sha256('\\x00'::bytea || leaf_data)"
                )
                if bad is not None:
                    raise StoreIntegrityError(f"leaf {bad}: stored data do not match its hash")
            changes = await conn.fetchval("SELECT count(*) FROM changes")
            if changes != tree.size:
                raise StoreIntegrityError(f"{changes} changes but {tree.size} log leaves")
            row = await conn.fetchrow("SELECT * FROM tree_heads ORDER BY tree_size DESC LIMIT 1")
            if row is None:
                if tree.size:
                    raise StoreIntegrityError(f"{tree.size} log leaves but no signed tree head")
                sth = sign_tree_head(self._key, 0, tree.root(), self._clock())
                await conn.execute(
                    "INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)"
                    " VALUES ($1, $2, $3, $4)",
                    sth.tree_size,
                    sth.root_hash,
                    sth.timestamp_ms,
                    sth.signature,
                )
            else:
                sth = _sth(row)
        self._check_head(tree, sth)
        self._tree, self._sth = tree, sth

    def _check_head(self, tree: MerkleTree, sth: SignedTreeHead) -> None:
        if sth.tree_size != tree.size:
            raise StoreIntegrityError(
                f"latest signed tree head has size {sth.tree_size} but the log has {tree.size} leaves"
            )
        if tree.root() != sth.root_hash:
            raise StoreIntegrityError(
                f"the log's root does not match the signed tree head at size {sth.tree_size}:"
                " the stored log was altered"
            )
        try:
            verify_tree_head(self._public_key, sth)
        except ProofError as exc:
            raise StoreIntegrityError(
                f"the latest tree head is not signed by this SST's key: {exc}"
            ) from exc

    async def _catch_up(self) -> None:
        """Re-read the log tail after a commit with an unknown outcome."""
        size = self._tree.size
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT leaf_hash FROM leaves WHERE leaf_index >= $1 ORDER BY leaf_index", size
            )
            row = await conn.fetchrow("SELECT * FROM tree_heads ORDER BY tree_size DESC LIMIT 1")
        for r in rows:
            self._tree.append(bytes(r["leaf_hash"]))
        try:
            if row is None:
                raise StoreIntegrityError("no signed tree head stored")
            sth = _sth(row)
            self._check_head(self._tree, sth)
        except StoreIntegrityError:
            self._tree.truncate(size)
            raise
        self._sth = sth
        self._stale = False

    # -- writes -----------------------------------------------------------------------------

    async def commit(self, entry: CommitEntry) -> CommitResult:
        """Commit one change atomically, or return the stored result for a known proposal.

        Raises ``SequenceError``, ``ProposalConflictError`` (same id, other content),
        ``StoreUnavailableError`` (database unreachable; retry is safe) and, for a
        malformed entry, ``ValueError``. On any error nothing is written.
        """
        if entry.sequence < 1:
            raise ValueError(f"sequence must be >= 1, got {entry.sequence}")
        async with self._lock:
            first_new_index = self._tree.size
            for attempt, pause_s in enumerate(_RETRY_PAUSES_S):
                try:
                    if self._stale:
                        await self._catch_up()
                    result = await self._commit_locked(entry)
                except _CONNECTION_ERRORS as exc:
                    self._stale = True
                    await self._pool.expire_connections()
                    if attempt == len(_RETRY_PAUSES_S) - 1:
                        raise StoreUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
                    await asyncio.sleep(pause_s)
                    continue
                except asyncpg.PostgresError as exc:
                    self._stale = True  # e.g. another writer took our leaf index
                    raise StoreError(f"commit failed, nothing written: {exc}") from exc
                if result.duplicate and result.leaf_index >= first_new_index:
                    # Our own earlier attempt committed before its connection broke.
                    result = dataclasses.replace(result, duplicate=False)
                return result
            raise AssertionError("unreachable")

    async def _commit_locked(self, entry: CommitEntry) -> CommitResult:
        assert self._sth is not None
        tree = self._tree
        index = tree.size
        lh = leaf_hash(entry.leaf_data)
        tree.append(lh)
        try:
            # Tree-head timestamps never go backwards, whatever the clock does.
            ts = max(self._clock(), self._sth.timestamp_ms)
            sth = sign_tree_head(self._key, index + 1, tree.root(), ts)
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT * FROM beco_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    entry.proposal_id,
                    entry.user_id,
                    entry.sequence,
                    entry.kind,
                    entry.state,
                    index,
                    lh,
                    entry.leaf_data,
                    entry.committed_ms,
                    sth.root_hash,
                    sth.timestamp_ms,
                    sth.signature,
                )
            assert row is not None
            outcome = row["o_outcome"]
            if outcome != "committed":
                tree.truncate(index)
        except BaseException:
            tree.truncate(index)
            raise
        if outcome == "sequence":
            raise SequenceError(entry.user_id, row["o_expected"], entry.sequence)
        if outcome == "duplicate":
            return await self._duplicate(entry, row, lh)
        self._sth = sth
        return CommitResult(entry.proposal_id, entry.user_id, entry.sequence, index, sth, False)

    async def _duplicate(self, entry: CommitEntry, row: Any, lh: bytes) -> CommitResult:
        same = (
            row["o_user_id"] == entry.user_id
            and row["o_sequence"] == entry.sequence
            and row["o_kind"] == entry.kind
            and bytes(row["o_leaf_hash"]) == lh
        )
        if not same:
            raise ProposalConflictError(
                f"proposal {entry.proposal_id!r} was already committed with different content"
            )
        index = row["o_leaf_index"]
        async with self._pool.acquire() as conn:
            head = await conn.fetchrow("SELECT * FROM tree_heads WHERE tree_size = $1", index + 1)
        assert head is not None  # every commit stores the tree head that includes its leaf
        return CommitResult(
            entry.proposal_id, entry.user_id, entry.sequence, index, _sth(head), True
        )

    # -- reads ------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        for attempt in range(2):
            try:
                async with self._pool.acquire() as conn:
                    rows: list[Any] = await conn.fetch(query, *args)
                    return rows
            except _CONNECTION_ERRORS as exc:
                # Pooled connections die with a server restart; retry once on fresh ones.
                await self._pool.expire_connections()
                if attempt:
                    raise StoreUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    async def get_user(self, user_id: str) -> tuple[int, bytes] | None:
        """(sequence, state) of a user, or None."""
        rows = await self._fetch("SELECT sequence, state FROM users WHERE user_id = $1", user_id)
        return (rows[0]["sequence"], bytes(rows[0]["state"])) if rows else None

    async def list_user_ids(self) -> list[str]:
        rows = await self._fetch("SELECT user_id FROM users ORDER BY user_id")
        return [r["user_id"] for r in rows]

    async def load_all_users(self) -> list[tuple[str, int, bytes]]:
        """Every user as (user_id, sequence, state)."""
        rows = await self._fetch("SELECT user_id, sequence, state FROM users ORDER BY user_id")
        return [(r["user_id"], r["sequence"], bytes(r["state"])) for r in rows]

    async def history(self, user_id: str) -> list[ChangeRecord]:
        """A user's committed changes, oldest first."""
        rows = await self._fetch(
            "SELECT c.proposal_id, c.user_id, c.sequence, c.kind, c.leaf_index, l.leaf_data,"
            " c.committed_ms FROM changes c JOIN leaves l ON l.leaf_index = c.leaf_index"
            " WHERE c.user_id = $1 ORDER BY c.sequence",
            user_id,
        )
        return [
            ChangeRecord(
                r["proposal_id"],
                r["user_id"],
                r["sequence"],
                r["kind"],
                r["leaf_index"],
                bytes(r["leaf_data"]),
                r["committed_ms"],
            )
            for r in rows
        ]

    async def tree_head_at(self, tree_size: int) -> SignedTreeHead | None:
        """The signed tree head stored for ``tree_size`` (one per commit), if any."""
        rows = await self._fetch("SELECT * FROM tree_heads WHERE tree_size = $1", tree_size)
        return _sth(rows[0]) if rows else None

    def tree_head(self) -> SignedTreeHead:
        """The latest committed signed tree head."""
        assert self._sth is not None
        return self._sth

    def _check_size(self, tree_size: int) -> None:
        published = self.tree_head().tree_size
        if not 0 <= tree_size <= published:
            raise ValueError(f"tree size {tree_size} out of range: the log has {published} leaves")

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        """Audit path of ``leaf_index`` in the tree of ``tree_size`` leaves (ValueError if out of range)."""
        self._check_size(tree_size)
        return self._tree.inclusion_proof(leaf_index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Proof that the tree of ``old_size`` leaves is a prefix of that of ``new_size``."""
        self._check_size(new_size)
        return self._tree.consistency_proof(old_size, new_size)

    def leaf_hash(self, leaf_index: int) -> bytes:
        """The hash of a committed leaf."""
        published = self.tree_head().tree_size
        if not 0 <= leaf_index < published:
            raise ValueError(
                f"leaf index {leaf_index} out of range: the log has {published} leaves"
            )
        return self._tree.leaf(leaf_index)
