"""SstStore: the SST's users, changes and Merkle log in PostgreSQL (asyncpg), one writer.

Commit path: ``commit()`` queues the entry (``commit_many()`` a batch's entries in one
call); ONE writer task takes the queued entries in order (so leaf indexes are dense and
per-user order is kept), appends their leaves
to the in-memory ``MerkleTree``, signs ONE tree head at the batch's end size and calls
``beco_commit_batch`` (see ``schema.py``), which writes the users' states, the
changes, the leaves (one multi-row statement each) and that head in one statement.
Every change of the batch is proved against the batch's head (its ``CommitResult``
carries it). An entry the database refuses (wrong sequence, recorded failure, known
proposal) is answered alone and the others are re-signed and written; an entry that
makes the statement fail is retried alone so it cannot take the others down. Nothing
is acknowledged before the transaction commits; on any error the tree is truncated
back.

A commit whose connection breaks has an unknown outcome: the store re-reads the log
tail and retries (idempotent on ``proposal_id``), so an entry is either committed
once or reported failed with nothing written.

The published tree head moves only after the database acknowledged the commit, and
proof requests are bounded by it, so readers never see an uncommitted leaf.

Start-up: migrations, then every leaf hash is loaded (about 0.5 s per 100k leaves),
leaf data are checked against their hashes in SQL, and the recomputed root must
equal the latest stored signed tree head, signed by our key. Otherwise the store
refuses to start with ``StoreIntegrityError``: the log was altered outside the SST.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beco_node.batch import MAX_BATCH as VALIDATOR_MAX_BATCH
from beco_node.keys import public_key_bytes
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, sign_tree_head, verify_tree_head
from beco_node.merkle.tree import MerkleTree
from beco_node.merkle.verify import ProofError
from beco_node.sst.records import (
    ChangeRecord,
    CommitEntry,
    CommitResult,
    FailedRecord,
    ProposalConflictError,
    ProposalFailedError,
    SequenceError,
    StoredCommit,
    StoreError,
    StoreIntegrityError,
    StoreUnavailableError,
)
from beco_node.sst.schema import migrate

__all__ = [
    "ChangeRecord",
    "CommitEntry",
    "CommitResult",
    "FailedRecord",
    "ProposalConflictError",
    "ProposalFailedError",
    "SequenceError",
    "SstStore",
    "StoreError",
    "StoreIntegrityError",
    "StoreUnavailableError",
    "StoredCommit",
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
# Bounds a connection attempt (asyncpg's default is 60 s): an address that drops packets
# must not hold the single writer, and every commit queued behind it, for a minute.
CONNECT_TIMEOUT_S = 10.0


_Pending = tuple[CommitEntry, "asyncio.Future[CommitResult]"]
MAX_BATCH = VALIDATOR_MAX_BATCH  # a validator batch is one transaction and one head


def _resolve(batch: list[_Pending], results: list[CommitResult | Exception]) -> None:
    for (_, fut), res in zip(batch, results, strict=True):
        if fut.done():  # the caller was cancelled
            continue
        if isinstance(res, Exception):
            fut.set_exception(res)
        else:
            fut.set_result(res)


def said(exc: BaseException) -> str:
    """An error's message, or its kind when it has none (a bare timeout)."""
    return str(exc) or type(exc).__name__


# The first signed tree head that includes leaf $1 (the head of its batch).
_COVERING_HEAD = "SELECT * FROM tree_heads WHERE tree_size > $1 ORDER BY tree_size LIMIT 1"


def split_calls(keys: list[tuple[str, str]]) -> list[list[int]]:
    """Split a batch's entries, given as (user id, proposal id), into groups that one
    ``beco_commit_batch`` call can take: distinct users and proposal ids, each user's
    entries in their order. Normally one group (the validator batches one change per
    user); a user's later entry, or a proposal queued twice, waits for the next one."""
    calls: list[list[int]] = []
    rest = list(range(len(keys)))
    while rest:
        users: set[str] = set()
        pids: set[str] = set()
        call: list[int] = []
        later: list[int] = []
        for i in rest:
            user, pid = keys[i]
            if user in users or pid in pids:
                later.append(i)
            else:
                call.append(i)
            users.add(user)  # a user whose entry waits keeps its later ones waiting too
            pids.add(pid)
        calls.append(call)
        rest = later
    return calls


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

    def __init__(
        self,
        pool: asyncpg.Pool,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._pool = pool
        self._key = signing_key
        self._public_key = public_key_bytes(signing_key)
        self._clock = clock
        self._tree = MerkleTree()
        self._sth: SignedTreeHead | None = None
        self._stale = False  # the log tail must be re-read before the next commit
        self._max_batch = max(1, max_batch)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Set when a query met a refused or broken connection: the SST's database watch
        # (services.startup) checks at once instead of at its next poll.
        self.connection_lost = asyncio.Event()

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
        max_batch: int = MAX_BATCH,
    ) -> SstStore:
        """Connect, migrate, load and verify the log (see module docstring)."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                command_timeout=60,
                timeout=CONNECT_TIMEOUT_S,
                reset=_no_session_state,
            )
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool, signing_key, clock, max_batch)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await store._load(verify_leaf_data=verify_leaf_data)
        except BaseException:
            await pool.close()
            raise
        store._writer = asyncio.create_task(store._write_loop(), name="sst-store-writer")
        return store

    async def ping(self, timeout_s: float = 5.0) -> None:
        """Raise ``StoreUnavailableError`` unless PostgreSQL answers now (readiness). A pooled
        connection that a server restart closed is replaced, not taken for an outage."""
        for attempt in range(2):
            try:
                async with self._pool.acquire(timeout=timeout_s) as conn:
                    await conn.fetchval("SELECT 1", timeout=timeout_s)
                return
            # asyncpg can also trip over its own protocol state on a connection the server is
            # closing (InternalClientError, seen while PostgreSQL shuts down): not answering.
            except (*_CONNECTION_ERRORS, asyncpg.exceptions.InternalClientError) as exc:
                slow = isinstance(exc, TimeoutError)
                if attempt or slow:
                    raise StoreUnavailableError(
                        f"PostgreSQL does not answer: {said(exc)}", timed_out=slow
                    ) from exc
                await self._pool.expire_connections()

    async def close(self) -> None:
        """Finish the commits already queued, then close the connections."""
        if self._writer is not None and not self._writer.done():
            self._queue.put_nowait(None)
            await self._writer
        await self._pool.close()

    async def _load(self, *, verify_leaf_data: bool) -> None:
        async with self._pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM tree_heads") == 0:
                # A new log starts with a signed empty head. Another SST starting on the
                # same new database may be first; then its head (and key) is checked below.
                empty = sign_tree_head(self._key, 0, MerkleTree().root(), self._clock())
                await conn.execute(
                    "INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
                    empty.tree_size,
                    empty.root_hash,
                    empty.timestamp_ms,
                    empty.signature,
                )
            # One snapshot for leaves, changes and head, whatever commits meanwhile.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
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
                row = await conn.fetchrow(
                    "SELECT * FROM tree_heads ORDER BY tree_size DESC LIMIT 1"
                )
        if row is None:
            raise StoreIntegrityError(f"{tree.size} log leaves but no signed tree head")
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
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
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
        ``StoreUnavailableError`` (database unreachable; retry is safe), ``StoreError``
        (statement refused) and, for a malformed entry, ``ValueError``. On any error
        nothing of this entry is written. Cancelling the caller does not cancel the write.
        """
        if entry.sequence < 1:
            raise ValueError(f"sequence must be >= 1, got {entry.sequence}")
        if self._writer is None or self._writer.done():
            raise StoreError("the store is closed")
        fut: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, fut))
        return await fut

    async def commit_many(self, entries: Sequence[CommitEntry]) -> list[CommitResult | Exception]:
        """``commit()`` for several entries queued together, in order, without a task or a
        call per entry: each gets its own result or exception (the ones ``commit()``
        raises), with the same guarantees (a refused entry is answered alone, per-user order
        is the order given). Cancelling the caller does not cancel the writes."""
        closed = self._writer is None or self._writer.done()
        loop = asyncio.get_running_loop()
        out: list[CommitResult | Exception | asyncio.Future[CommitResult]] = []
        for entry in entries:
            if entry.sequence < 1:
                out.append(ValueError(f"sequence must be >= 1, got {entry.sequence}"))
            elif closed:
                out.append(StoreError("the store is closed"))
            else:
                fut: asyncio.Future[CommitResult] = loop.create_future()
                self._queue.put_nowait((entry, fut))
                out.append(fut)
        results: list[CommitResult | Exception] = []
        try:
            for r in out:
                if isinstance(r, asyncio.Future):
                    try:  # normally all resolved in one turn (one writer batch)
                        results.append(await r)
                    except Exception as exc:
                        results.append(exc)
                else:
                    results.append(r)
        except BaseException:  # cancelled: the entries are still written, just not answered
            for r in out:
                if isinstance(r, asyncio.Future):
                    r.cancel()
            raise
        return results

    async def _write_loop(self) -> None:
        """The single writer: takes queued entries in order and commits them in batches."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self._max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    self._queue.put_nowait(None)  # stop after this batch
                    break
                batch.append(nxt)
            try:
                await self._run_batch(batch)
            except Exception as exc:  # never let the writer die with callers waiting
                self._stale = True
                _resolve(batch, [StoreError(f"commit failed: {exc!r}") for _ in batch])

    async def _run_batch(
        self,
        batch: list[_Pending],
        first_start: int | None = None,
        claimed: set[str] | None = None,
    ) -> None:
        """Commit ``batch`` (retrying broken connections) and resolve every caller's future.

        ``first_start`` is the tree size before the first attempt at these entries: a
        leaf at or past it that matches an entry was written by one of our attempts,
        unless an entry already reported it (``claimed`` proposal ids).
        """
        claimed = set() if claimed is None else claimed
        for attempt, pause_s in enumerate(_RETRY_PAUSES_S):
            try:
                if self._stale:
                    await self._catch_up()
                if first_start is None:
                    first_start = self._tree.size
                attempt_claimed = set(claimed)
                results = await self._write(batch, first_start, attempt_claimed)
            except _CONNECTION_ERRORS as exc:
                self._stale = True
                self.connection_lost.set()
                await self._pool.expire_connections()
                if attempt == len(_RETRY_PAUSES_S) - 1:
                    msg = f"PostgreSQL unavailable: {exc}"
                    _resolve(batch, [StoreUnavailableError(msg) for _ in batch])
                    return
                await asyncio.sleep(pause_s)
                continue
            except asyncpg.PostgresError as exc:
                self._stale = True  # e.g. another writer took our leaf index
                if len(batch) > 1:  # find the culprit: the others must not fail with it
                    for item in batch:
                        await self._run_batch([item], first_start, claimed)
                    return
                _resolve(batch, [StoreError(f"commit failed, nothing written: {exc}")])
                return
            except StoreIntegrityError as exc:
                _resolve(batch, [StoreIntegrityError(str(exc)) for _ in batch])
                return
            claimed |= attempt_claimed
            _resolve(batch, results)
            return

    async def _write(
        self, batch: list[_Pending], first_start: int, claimed: set[str]
    ) -> list[CommitResult | Exception]:
        """Commit ``batch`` with one ``beco_commit_batch`` call per group of distinct
        users (``split_calls``: normally one), each signing ONE tree head at its end size.

        A refused entry (wrong sequence, recorded failure, known proposal) is answered
        alone and the rest re-signed and sent again (the refusing call wrote nothing). A
        single call is its own transaction; several share one (one WAL flush). The tree
        is rolled back to where it was if anything raises.
        """
        assert self._sth is not None
        tree = self._tree
        start = tree.size
        last_ts = self._sth.timestamp_ms
        last_sth: SignedTreeHead | None = None
        out: list[CommitResult | Exception | None] = [None] * len(batch)
        entries = [e for e, _ in batch]
        hashes = [leaf_hash(e.leaf_data) for e in entries]
        calls = split_calls([(e.user_id, e.proposal_id) for e in entries])
        try:
            async with self._pool.acquire() as conn:
                tx = conn.transaction() if len(calls) > 1 else contextlib.nullcontext()
                async with tx:
                    for call in calls:
                        todo = call
                        while todo:
                            base = tree.size
                            for i in todo:
                                tree.append(hashes[i])
                            # Tree-head timestamps never go backwards, whatever the clock does.
                            ts = max(self._clock(), last_ts)
                            sth = sign_tree_head(self._key, tree.size, tree.root(), ts)
                            part = [entries[i] for i in todo]
                            rows = await conn.fetch(
                                "SELECT * FROM beco_commit_batch("
                                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                                [e.proposal_id for e in part],
                                [e.user_id for e in part],
                                [e.sequence for e in part],
                                [e.kind for e in part],
                                [e.state for e in part],
                                [hashes[i] for i in todo],
                                [e.leaf_data for e in part],
                                [e.committed_ms for e in part],
                                base,
                                sth.root_hash,
                                sth.timestamp_ms,
                                sth.signature,
                            )
                            if not rows:  # every entry committed, under this one head
                                last_ts, last_sth = ts, sth
                                for k, i in enumerate(todo):
                                    claimed.add(entries[i].proposal_id)
                                    out[i] = CommitResult(
                                        entries[i].proposal_id,
                                        entries[i].user_id,
                                        entries[i].sequence,
                                        base + k,
                                        sth,
                                        False,
                                    )
                                break
                            tree.truncate(base)
                            refused = {todo[r["o_ord"] - 1]: r for r in rows}
                            for i, row in refused.items():
                                out[i] = await self._refused(
                                    conn, entries[i], row, hashes[i], first_start, claimed
                                )
                            todo = [i for i in todo if i not in refused]
        except BaseException:
            tree.truncate(start)
            raise
        if last_sth is not None:
            self._sth = last_sth
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    async def _refused(
        self,
        conn: Any,
        entry: CommitEntry,
        row: Any,
        lh: bytes,
        first_start: int,
        claimed: set[str],
    ) -> CommitResult | Exception:
        if row["o_outcome"] == "sequence":
            return SequenceError(entry.user_id, row["o_expected"], entry.sequence)
        if row["o_outcome"] == "failed":
            failed = await self._failed(conn, entry.proposal_id)
            assert failed is not None  # failures are never deleted under the lock
            return ProposalFailedError(failed)
        return await self._duplicate(conn, entry, row, lh, first_start, claimed)

    @staticmethod
    async def _duplicate(
        conn: Any, entry: CommitEntry, row: Any, lh: bytes, first_start: int, claimed: set[str]
    ) -> CommitResult | Exception:
        same = (
            row["o_user_id"] == entry.user_id
            and row["o_sequence"] == entry.sequence
            and row["o_kind"] == entry.kind
            and bytes(row["o_leaf_hash"]) == lh
        )
        if not same:
            return ProposalConflictError(
                f"proposal {entry.proposal_id!r} was already committed with different content"
            )
        index = row["o_leaf_index"]
        head = await conn.fetchrow(_COVERING_HEAD, index)
        assert head is not None  # every commit stores a tree head that includes its leaf
        # Written after this batch began and not by an earlier entry of it: by our own
        # attempt whose connection broke before the acknowledgement, so it is new.
        fresh = index >= first_start and entry.proposal_id not in claimed
        claimed.add(entry.proposal_id)
        return CommitResult(
            entry.proposal_id, entry.user_id, entry.sequence, index, _sth(head), not fresh
        )

    # -- outcomes ---------------------------------------------------------------------------

    @staticmethod
    async def _failed(conn: Any, proposal_id: str) -> FailedRecord | None:
        row = await conn.fetchrow(
            "SELECT code, reason, failed_ms FROM failed_proposals WHERE proposal_id = $1",
            proposal_id,
        )
        if row is None:
            return None
        return FailedRecord(proposal_id, row["code"], row["reason"], row["failed_ms"])

    async def outcome(self, proposal_id: str) -> StoredCommit | FailedRecord | None:
        """What the database says of a proposal: committed (where), failed (why), or None."""
        rows = await self._fetch(
            "SELECT c.user_id, c.sequence, c.leaf_index, c.committed_ms, h.tree_size,"
            " h.root_hash, h.timestamp_ms, h.signature FROM changes c"
            f" CROSS JOIN LATERAL ({_COVERING_HEAD.replace('$1', 'c.leaf_index')}) h"
            " WHERE c.proposal_id = $1",
            proposal_id,
        )
        if rows:
            r = rows[0]
            res = CommitResult(
                proposal_id, r["user_id"], r["sequence"], r["leaf_index"], _sth(r), True
            )
            return StoredCommit(res, r["committed_ms"])
        rows = await self._fetch(
            "SELECT code, reason, failed_ms FROM failed_proposals WHERE proposal_id = $1",
            proposal_id,
        )
        if rows:
            r = rows[0]
            return FailedRecord(proposal_id, r["code"], r["reason"], r["failed_ms"])
        return None

    async def record_failure(
        self, proposal_id: str, code: str, reason: str, signed_ms: int | None = None
    ) -> StoredCommit | FailedRecord:
        """Record that a proposal failed for good, unless it committed first.

        Serialised with commits by their lock: afterwards ``commit`` refuses this proposal
        (``ProposalFailedError``). Returns the commit if it won, else the (first) failure.
        ``signed_ms`` is the request's signed timestamp (None: unknown, never pruned).
        """
        await self._fetch(
            "SELECT beco_fail($1, $2, $3, $4, $5)",
            proposal_id,
            code,
            reason,
            self._clock(),
            signed_ms,
        )
        out = await self.outcome(proposal_id)
        assert out is not None
        return out

    async def prune_failures(self, signed_before_ms: int, batch: int = 10_000) -> int:
        """Forget the failure records of requests signed before ``signed_before_ms`` (the
        caller's admission horizon: such a request can never commit); returns how many.
        Deletes ``batch`` rows per transaction, so commits wait only briefly."""
        total = 0
        while True:
            try:
                rows = await self._fetch(
                    "SELECT beco_prune_failures($1, $2) AS n", signed_before_ms, batch
                )
            except asyncpg.PostgresError as exc:
                raise StoreError(f"pruning failure records: {exc}") from exc
            n = int(rows[0]["n"])
            total += n
            if n < batch:
                return total

    async def changed_users(
        self, from_size: int, limit: int = 1000
    ) -> tuple[list[tuple[str, int, bytes]], int]:
        """Current (user_id, sequence, state) of the users the log entries [from_size, to)
        changed, and ``to`` (at most ``limit`` entries on, at most the published size)."""
        to = min(max(from_size, 0) + limit, self.tree_head().tree_size)
        if to <= from_size:
            return [], max(from_size, to)
        rows = await self._fetch(
            "SELECT u.user_id, u.sequence, u.state FROM users u WHERE u.user_id IN"
            " (SELECT c.user_id FROM changes c WHERE c.leaf_index >= $1 AND c.leaf_index < $2)"
            " ORDER BY u.user_id",
            from_size,
            to,
        )
        return [(r["user_id"], r["sequence"], bytes(r["state"])) for r in rows], to

    # -- reads ------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        for attempt in range(2):
            try:
                async with self._pool.acquire() as conn:
                    rows: list[Any] = await conn.fetch(query, *args)
                    return rows
            except _CONNECTION_ERRORS as exc:
                # Pooled connections die with a server restart; retry once on fresh ones.
                self.connection_lost.set()
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

    async def iter_users(self, page: int = 5_000) -> AsyncIterator[tuple[str, int, bytes]]:
        """Every user as (user_id, sequence, state) in user id order, ``page`` rows a query:
        memory holds one page, not every user (LoadUsers streams a million users)."""
        after = ""  # below every user id (ids are at least one character)
        while True:
            rows = await self._fetch(
                "SELECT user_id, sequence, state FROM users WHERE user_id > $1"
                " ORDER BY user_id LIMIT $2",
                after,
                page,
            )
            for r in rows:
                yield r["user_id"], r["sequence"], bytes(r["state"])
            if len(rows) < page:
                return
            after = rows[-1]["user_id"]

    async def load_all_users(self) -> list[tuple[str, int, bytes]]:
        """Every user as (user_id, sequence, state)."""
        rows = await self._fetch("SELECT user_id, sequence, state FROM users ORDER BY user_id")
        return [(r["user_id"], r["sequence"], bytes(r["state"])) for r in rows]

    async def history(
        self, user_id: str, *, after_sequence: int = 0, limit: int | None = None
    ) -> list[ChangeRecord]:
        """A user's committed changes with a sequence above ``after_sequence``, oldest first,
        at most ``limit`` of them (None: all)."""
        rows = await self._fetch(
            "SELECT c.proposal_id, c.user_id, c.sequence, c.kind, c.leaf_index, l.leaf_data,"
            " c.committed_ms FROM changes c JOIN leaves l ON l.leaf_index = c.leaf_index"
            " WHERE c.user_id = $1 AND c.sequence > $2 ORDER BY c.sequence LIMIT $3",
            user_id,
            after_sequence,
            limit,
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
        """The signed tree head stored for ``tree_size`` (one per batch), if any."""
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


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does (roll back a
    transaction left open). The store keeps no session state (its advisory locks are
    transaction-scoped; no LISTEN, cursor or SET), so the default reset statement would
    only add a round trip to PostgreSQL to every commit before it is answered."""
    del conn
