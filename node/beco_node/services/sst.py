"""The SST service: verifies quorum certificates and commits through the SstStore.

For a ``commit_batch`` from the validator it checks, in order: the envelope (sender
is the membership's validator), the batch certificate (each vote's signature once: distinct
current user-node members over the same batch root), then per change: its header digest
is the batch's at its index, at least ``quorum`` voters did not reject it, ``sequence ==
current + 1``, the client's signature on the embedded request, and the same state
transition the voters ran (``model.apply``) on its own copy. A change that fails is
answered alone (``OUTCOME_REJECTED`` with its status). The others go to
``SstStore.commit`` together, so they share one Postgres transaction. The same proposal
delivered twice is stored once; a retried proposal whose first attempt committed is
answered with that commit. Once verified, the commits and their bookkeeping (cache,
notices) run in a task the runtime owns, so a caller's deadline or disconnect cannot skip
them. Once the reply to the validator has gone, it tells every user node
(``applied_batch``, signed once per batch; retried a few times) so they update their
memory; nodes also catch up by log position (``Changes``).

Outcomes are durable: ``GetOutcome`` answers from the database, and
``RecordFailure`` records a proposal as failed for good (unless it committed first),
after which the store refuses to commit it (see ``sst/schema.py``). ``prune_loop``
forgets a record once its request is past the admission horizon (``auth``, from
``--skew-ms``): no quorum can vote for it any more, so the guard is no longer needed.

The current state of users is cached in memory (the SST is the only writer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc

from beco_node import auth, metrics, model, peer
from beco_node.errors import (
    AlreadyExists,
    BecoError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from beco_node.lru import BoundedLru
from beco_node.merkle.sth import SignedTreeHead
from beco_node.services.runtime import ERROR_CODES, Runtime, rpc_handler
from beco_node.sst.records import (
    CommitEntry,
    CommitResult,
    FailedRecord,
    ProposalConflictError,
    ProposalFailedError,
    SequenceError,
    StoredCommit,
    StoreError,
    StoreUnavailableError,
)
from beco_node.sst.store import SstStore

log = logging.getLogger("beco.sst")
ERROR_CODES[StoreUnavailableError] = "UNAVAILABLE"
Ctx = grpc.aio.ServicerContext[Any, Any]
# Bounds (docs/architecture.md, "Memory bounds"): current states, and the commit info of
# recent proposals (a re-delivered certificate is answered without a transaction).
STATE_CACHE_ENTRIES = 100_000
STATE_CACHE_BYTES = 64 * 1024 * 1024
RECENT = 50_000
# How often failure records past the admission horizon are pruned.
PRUNE_INTERVAL_S = 60.0
# Pauses between the tries of a commit notice (the last try is followed by no pause).
NOTICE_RETRY_PAUSES_S = (0.25, 1.0, 2.0, 0.0)
# A batch's notices are split into messages of at most this many bytes of states (one
# state is at most ~25 KiB, docs/architecture.md), below the 64 KiB peer message limit.
NOTICE_BYTES = 32 * 1024


def _failed_outcome(rec: FailedRecord) -> ppb.Outcome:
    return ppb.Outcome(status=ppb.OUTCOME_FAILED, code=rec.code, reason=rec.reason)


def _rejected(exc: BecoError) -> ppb.Outcome:
    """One change of a batch refused by the SST, with its status (the others go on)."""
    return ppb.Outcome(status=ppb.OUTCOME_REJECTED, code=exc.code, reason=exc.message)


def _chunks(applied: list[ppb.Applied], limit: int) -> list[list[ppb.Applied]]:
    """Split a batch's notices so each message stays below ``limit`` bytes of states."""
    out: list[list[ppb.Applied]] = []
    size = 0
    for a in applied:
        n = a.ByteSize()
        if not out or (size + n > limit and out[-1]):
            out.append([])
            size = 0
        out[-1].append(a)
        size += n
    return out


def tree_head_pb(sth: SignedTreeHead, public_key: bytes) -> pb.TreeHead:
    return pb.TreeHead(
        tree_size=sth.tree_size,
        root_hash=sth.root_hash,
        timestamp_ms=sth.timestamp_ms,
        signature=sth.signature,
        sst_public_key=public_key,
    )


class SstService(ppb_grpc.SstServicer):
    def __init__(self, rt: Runtime, store: SstStore) -> None:
        self.rt = rt
        self.store = store
        self.cache: BoundedLru[str, tuple[int, bytes]] = BoundedLru(
            STATE_CACHE_ENTRIES, STATE_CACHE_BYTES, lambda v: len(v[1])
        )
        # proposal id -> serialised CommitInfo (compact: no state)
        self.recent: BoundedLru[str, bytes] = BoundedLru(RECENT, RECENT * 1024, len)
        metrics.TREE_SIZE.set(store.tree_head().tree_size)

    def _query(self, env: ppb.PeerEnvelope) -> ppb.SstQuery:
        peer.open_envelope(env, "sst_query", self.rt.membership, self.rt.now_ms())
        q = peer.parse(ppb.SstQuery, env.payload)
        assert isinstance(q, ppb.SstQuery)
        return q

    async def _state(self, uid: str) -> tuple[int, bytes] | None:
        hit = self.cache.get(uid)
        if hit is None:
            hit = await self.store.get_user(uid)
            if hit is not None:
                self.cache.put(uid, hit)
        return hit

    async def _warm(self, uids: set[str]) -> None:
        """Cache the current states of ``uids`` not cached, fetched concurrently (a failure
        is left to the change's own check, which asks again and says why)."""
        missing = [u for u in uids if u not in self.cache]
        if missing:
            await asyncio.gather(*(self._state(u) for u in missing), return_exceptions=True)

    def _commit_info(self, res: CommitResult, committed_ms: int) -> pb.CommitInfo:
        return pb.CommitInfo(
            proposal_id=res.proposal_id,
            sequence=res.sequence,
            leaf_index=res.leaf_index,
            tree_head=tree_head_pb(res.tree_head, self.rt.public_key),
            committed_ms=committed_ms,
            duplicate=res.duplicate,
        )

    @rpc_handler("sst.CommitBatch")
    async def CommitBatch(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.BatchOutcome:
        rt = self.rt
        ms = rt.membership
        peer.open_envelope(request, "commit_batch", ms, rt.now_ms())
        cert = peer.parse(ppb.BatchCertificate, request.payload)
        assert isinstance(cert, ppb.BatchCertificate)
        validator = ms.one("validator").peer_id
        if any(h.validator != validator for h in cert.headers):
            raise InvalidArgument("the certificate names another validator")
        checked = peer.verify_batch_certificate(cert, ms)  # each vote's signature, once
        # Checked one after the other in this call (no task per change): the states not
        # cached are fetched together first.
        await self._warm({h.proposal.user_id for h in cert.headers})
        # A change that passed carries its header's digest (checked equal to the batch's).
        items = [
            await self._entry(h, c, b"" if isinstance(c, BecoError) else cert.digests[i])
            for h, c, i in zip(cert.headers, checked, cert.indexes, strict=True)
        ]
        # From here the commits and their bookkeeping (cache, notices) run to the end in a
        # task the runtime owns, whatever happens to this call.
        replied = asyncio.get_running_loop().create_future()
        task = rt.start(self._commit_batch(list(items), replied))
        try:
            return await asyncio.shield(task)
        finally:
            # The reply goes first: gRPC takes it when this returns, in this turn of the
            # event loop; the notices, released here, start in a later one.
            replied.set_result(None)

    async def _entry(
        self,
        header: ppb.ProposalHeader,
        checked: tuple[ppb.ProposalHeader, list[str]] | BecoError,
        digest: bytes,
    ) -> CommitEntry | ppb.Outcome:
        """One change of a batch: the entry to commit, or its outcome already (a commit
        found again, or the refusal of this change alone)."""
        prop = header.proposal
        done = self.recent.get(prop.proposal_id)
        if done is not None:  # a re-delivered certificate: no transaction needed
            return await self._duplicate(prop.user_id, done)
        try:
            if isinstance(checked, BecoError):
                raise checked
            return await self._verified_entry(header, checked[1], digest)
        except BecoError as exc:
            # A retried proposal whose first attempt committed no longer fits the current
            # sequence: answer that commit instead of an error.
            known = await self._known(prop.proposal_id)
            if known is not None:
                return known
            return _rejected(exc)

    async def _verified_entry(
        self, header: ppb.ProposalHeader, voters: list[str], digest: bytes
    ) -> CommitEntry:
        """Every check the SST makes on one change once its certificate holds (see the
        module docstring). ``digest``: the header's, as the certificate checked it."""
        rt = self.rt
        prop = header.proposal
        current = await self._state(prop.user_id)
        cur_seq = current[0] if current else 0
        if header.sequence != cur_seq + 1:
            raise FailedPrecondition(
                f"wrong sequence for user {prop.user_id}: expected {cur_seq + 1}, "
                f"got {header.sequence}"
            )
        req = model.parse_mutation(prop.method, prop.request)
        caller = auth.verify_signature(prop.method, req)
        auth.check_sequenced_in_time(req, header.validator_ts_ms, rt.settings.skew_ms)
        if peer.proposal_id(req.auth.signature) != prop.proposal_id:  # type: ignore[attr-defined]
            raise InvalidArgument("proposal id does not match the request")
        if model.target_user(prop.method, req, caller) != prop.user_id:
            raise InvalidArgument("proposal user does not match the request")
        old = None
        if current is not None:
            old = pb.UserState()
            old.ParseFromString(current[1])
        new = model.apply(prop.method, req, caller, old, header.sequence, header.validator_ts_ms)
        state = new.SerializeToString(deterministic=True)
        leaf = pb.LogLeaf(
            proposal_id=prop.proposal_id,
            user_id=prop.user_id,
            sequence=header.sequence,
            kind=model.MUTATIONS[prop.method].kind,
            actor=caller,
            request_digest=hashlib.sha256(prop.request).digest(),
            state_digest=hashlib.sha256(state).digest(),
            validator_ts_ms=header.validator_ts_ms,
            voters=sorted(voters),
            proposal_digest=digest,
        )
        return CommitEntry(
            proposal_id=prop.proposal_id,
            user_id=prop.user_id,
            sequence=header.sequence,
            kind=leaf.kind,
            state=state,
            leaf_data=leaf.SerializeToString(deterministic=True),
            committed_ms=rt.now_ms(),
        )

    async def _commit_batch(
        self, items: list[CommitEntry | ppb.Outcome], replied: asyncio.Future[None] | None = None
    ) -> ppb.BatchOutcome:
        """Commit a batch's entries (queued together, so the store writes them in one
        transaction), then one signed notice per batch (split to stay below the message
        limit) to every user node, sent once ``replied`` is done (the validator's reply
        first: it carries the same notices). If the database was unreachable for some
        entry, the whole answer is UNAVAILABLE after the others' bookkeeping: the validator
        re-sends the certificate, and what committed is answered as such."""
        entries = [it for it in items if isinstance(it, CommitEntry)]
        done = await self._commit(entries)
        out = ppb.BatchOutcome()
        fresh: list[ppb.Applied] = []
        unavailable: BaseException | None = None
        for it in items:
            if isinstance(it, ppb.Outcome):
                out.outcomes.append(it)
                continue
            r = done[it.proposal_id]
            if isinstance(r, Unavailable):
                unavailable = r
                out.outcomes.append(_rejected(r))
            elif isinstance(r, BecoError):
                out.outcomes.append(_rejected(r))
            elif isinstance(r, BaseException):
                raise r
            else:
                if r.status == ppb.OUTCOME_COMMITTED and not r.commit.duplicate:
                    fresh.append(
                        ppb.Applied(
                            user_id=it.user_id,
                            sequence=it.sequence,
                            state=it.state,
                            commit=r.commit,
                        )
                    )
                out.outcomes.append(r)
        for chunk in _chunks(fresh, NOTICE_BYTES):
            env = peer.seal(
                "applied_batch",
                ppb.AppliedBatch(applied=chunk),
                self.rt.key,
                self.rt.peer_id,
                self.rt.now_ms(),
            )
            out.applied.append(env)
        if out.applied:
            for m in self.rt.membership.user_nodes:
                self.rt.spawn(self._notify(m, list(out.applied), replied))
        if unavailable is not None:
            raise unavailable
        return out

    async def _commit(self, entries: list[CommitEntry]) -> dict[str, ppb.Outcome | BaseException]:
        """The entries' outcomes by proposal id: one store call for the batch; only a
        refused entry's outcome needs more queries (its own task)."""
        t0 = time.perf_counter()
        results = await self.store.commit_many(entries) if entries else []
        elapsed = time.perf_counter() - t0
        done: dict[str, ppb.Outcome | BaseException] = {}
        slow: list[tuple[CommitEntry, CommitResult | Exception]] = []
        for entry, res in zip(entries, results, strict=True):
            if isinstance(res, CommitResult) and not res.duplicate:
                done[entry.proposal_id] = self._committed(entry, res, elapsed)
            else:
                slow.append((entry, res))
        if slow:
            outs = await asyncio.gather(
                *(self._settle(e, r, elapsed) for e, r in slow), return_exceptions=True
            )
            for (entry, _), out in zip(slow, outs, strict=True):
                done[entry.proposal_id] = out
        if entries:
            metrics.TREE_SIZE.set(self.store.tree_head().tree_size)
        return done

    def _committed(self, entry: CommitEntry, res: CommitResult, elapsed: float) -> ppb.Outcome:
        """A fresh commit's outcome and bookkeeping."""
        uid = entry.user_id
        self._cache_put(uid, res.sequence, entry.state)
        metrics.COMMIT_TIME.observe(elapsed)
        info = self._commit_info(res, entry.committed_ms)
        self.recent.put(res.proposal_id, info.SerializeToString())
        log.debug("committed", extra={"fields": {"proposal": res.proposal_id, "seq": res.sequence}})
        return ppb.Outcome(status=ppb.OUTCOME_COMMITTED, commit=info, state=entry.state)

    async def _settle(
        self, entry: CommitEntry, res: CommitResult | Exception, elapsed: float
    ) -> ppb.Outcome:
        """The outcome of an entry the store refused or found committed before."""
        uid = entry.user_id
        if isinstance(res, CommitResult):  # a duplicate
            metrics.COMMIT_TIME.observe(elapsed)
            return await self._committed_outcome(self._commit_info(res, entry.committed_ms), uid)
        try:
            raise res
        except SequenceError as exc:
            self.cache.pop(uid)
            known = await self._known(entry.proposal_id)
            if known is not None:
                return known
            raise FailedPrecondition(str(exc)) from None
        except ProposalConflictError:
            # The same signed request, committed by an earlier attempt (other timestamp).
            known = await self._known(entry.proposal_id)
            if known is not None:
                return known
            raise AlreadyExists(f"proposal {entry.proposal_id} conflicts") from None
        except ProposalFailedError as exc:
            return _failed_outcome(exc.record)
        except StoreUnavailableError as exc:
            raise Unavailable(str(exc)) from None
        except StoreError as exc:
            self.cache.pop(uid)
            raise BecoError(str(exc), "ABORTED") from None

    def _cache_put(self, uid: str, seq: int, state: bytes) -> None:
        hit = self.cache.get(uid)
        if hit is None or hit[0] < seq:
            self.cache.put(uid, (seq, state))

    async def _committed_outcome(self, info: pb.CommitInfo, uid: str) -> ppb.Outcome:
        """A commit found again (a retry): its place in the log, and the user's state now,
        with the notice for that state (so voters lagging behind can apply it)."""
        info.duplicate = True
        out = ppb.Outcome(status=ppb.OUTCOME_COMMITTED, commit=info)
        hit = await self._state(uid)
        if hit is None or hit[0] < info.sequence:  # committed, its bookkeeping still running
            hit = await self.store.get_user(uid)
            if hit is not None:
                self._cache_put(uid, *hit)
        if hit is not None:
            out.state = hit[1]
            now = ppb.Applied(user_id=uid, sequence=hit[0], state=hit[1], commit=info)
            out.applied.CopyFrom(
                peer.seal("applied", now, self.rt.key, self.rt.peer_id, self.rt.now_ms())
            )
        return out

    async def _known(self, proposal_id: str) -> ppb.Outcome | None:
        """The durable outcome of a proposal as an Outcome, or None if it has none."""
        try:
            found = await self.store.outcome(proposal_id)
        except StoreUnavailableError as exc:
            raise Unavailable(str(exc)) from None
        return None if found is None else await self._outcome_of(found)

    async def _outcome_of(self, found: StoredCommit | FailedRecord) -> ppb.Outcome:
        if isinstance(found, FailedRecord):
            return _failed_outcome(found)
        return await self._committed_outcome(
            self._commit_info(found.result, found.committed_ms), found.result.user_id
        )

    async def _duplicate(self, uid: str, info_bytes: bytes) -> ppb.Outcome:
        """The outcome of a proposal committed before, rebuilt from its compact commit info
        (``recent``) and the user's current state (with its notice, as after a first
        delivery)."""
        return await self._committed_outcome(pb.CommitInfo.FromString(info_bytes), uid)

    async def _notify(
        self, member: Any, envs: list[ppb.PeerEnvelope], after: asyncio.Future[None] | None = None
    ) -> None:
        """Deliver a batch's commit notices in order, once ``after`` is done, each retried a
        few times; the nodes' catch-up covers the rest."""
        if after is not None:
            await after
        stub = ppb_grpc.UserNodeStub(self.rt.peer_channel(member))
        for env in envs:
            code = ""
            for pause in NOTICE_RETRY_PAUSES_S:
                try:
                    await stub.ApplyBatch(env, timeout=2)
                    break
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                await asyncio.sleep(pause)
            else:
                log.info("user node %s missed a commit notice: %s", member.name, code)

    @rpc_handler("sst.GetOutcome")
    async def GetOutcome(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        q = self._query(request)
        known = await self._known(q.proposal_id)
        return known if known is not None else ppb.Outcome(status=ppb.OUTCOME_UNSPECIFIED)

    @rpc_handler("sst.RecordFailure")
    async def RecordFailure(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        peer.open_envelope(request, "record_failure", self.rt.membership, self.rt.now_ms())
        rec = peer.parse(ppb.FailureRecord, request.payload)
        assert isinstance(rec, ppb.FailureRecord)
        if not rec.proposal_id or not rec.code:
            raise InvalidArgument("a failure record needs a proposal id and a code")
        task = self.rt.start(self._record(rec))
        return await self._outcome_of(await asyncio.shield(task))

    async def _record(self, rec: ppb.FailureRecord) -> StoredCommit | FailedRecord:
        try:
            return await self.store.record_failure(
                rec.proposal_id, rec.code, rec.reason, rec.signed_ms or None
            )
        except StoreUnavailableError as exc:
            raise Unavailable(str(exc)) from None  # a status, not a crash of the task

    async def prune_failures(self) -> int:
        """Forget the failure records of requests signed before the admission horizon."""
        horizon = auth.admission_horizon_ms(self.rt.settings.skew_ms)
        n = await self.store.prune_failures(self.rt.now_ms() - horizon)
        if n:
            log.info("pruned failure records past the admission horizon: %d", n)
        return n

    async def prune_loop(self, interval_s: float = PRUNE_INTERVAL_S) -> None:
        """``prune_failures`` every ``interval_s`` (in the node's TaskGroup)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.prune_failures()
            except StoreUnavailableError as exc:
                log.info("pruning failure records postponed: %s", exc)
            except StoreError as exc:  # the records stay: a cost, never a wrong answer
                log.warning("pruning failure records failed: %s", exc)

    @rpc_handler("sst.Changes")
    async def Changes(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.ChangesReply:
        q = self._query(request)
        head = self.store.tree_head().tree_size
        users, nxt = await self.store.changed_users(q.tree_size)
        out = ppb.ChangesReply(next_size=nxt, head_size=head)
        for _, seq, state in users:
            out.users.add(found=True, sequence=seq, state=state)
        return out

    @rpc_handler("sst.GetUserState")
    async def GetUserState(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.UserStateReply:
        q = self._query(request)
        hit = await self._state(q.user_id)
        if hit is None:
            return ppb.UserStateReply(found=False)
        return ppb.UserStateReply(found=True, sequence=hit[0], state=hit[1])

    async def LoadUsers(
        self, request: ppb.PeerEnvelope, context: Ctx
    ) -> AsyncIterator[ppb.UserStateReply]:
        try:
            self._query(request)
        except BecoError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        # Paged: a user changed while the stream runs may come at its old state; the
        # node's catch-up from the head it read before the stream brings it.
        async for _, seq, state in self.store.iter_users():
            yield ppb.UserStateReply(found=True, sequence=seq, state=state)

    @rpc_handler("sst.History")
    async def History(self, request: ppb.PeerEnvelope, context: Ctx) -> pb.GetHistoryResponse:
        q = self._query(request)
        if await self._state(q.user_id) is None:
            raise NotFound(f"no user {q.user_id}")
        out = pb.GetHistoryResponse()
        # page_size 0: everything (a user node from before paging)
        limit = q.page_size + 1 if q.page_size else None
        records = await self.store.history(q.user_id, after_sequence=q.after_sequence, limit=limit)
        if q.page_size and len(records) > q.page_size:
            records = records[: q.page_size]
            out.next_page_token = str(records[-1].sequence)
        for rec in records:
            out.entries.add(
                proposal_id=rec.proposal_id,
                sequence=rec.sequence,
                kind=rec.kind,
                leaf_index=rec.leaf_index,
                leaf_data=rec.leaf_data,
                committed_ms=rec.committed_ms,
            )
        return out

    @rpc_handler("sst.TreeHead")
    async def TreeHead(self, request: ppb.PeerEnvelope, context: Ctx) -> pb.TreeHead:
        self._query(request)
        return tree_head_pb(self.store.tree_head(), self.rt.public_key)

    def _size_or_latest(self, size: int, head: pb.TreeHead) -> int:
        """0 asks for the latest tree: fill in its signed head, so the proof comes with the
        root it verifies against."""
        if size:
            return size
        sth = self.store.tree_head()
        head.CopyFrom(tree_head_pb(sth, self.rt.public_key))
        return sth.tree_size

    @rpc_handler("sst.InclusionProof")
    async def InclusionProof(self, request: ppb.PeerEnvelope, context: Ctx) -> pb.InclusionProof:
        q = self._query(request)
        out = pb.InclusionProof(leaf_index=q.leaf_index)
        size = out.tree_size = self._size_or_latest(q.tree_size, out.tree_head)
        try:
            out.hashes.extend(self.store.inclusion_proof(q.leaf_index, size))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return out

    @rpc_handler("sst.ConsistencyProof")
    async def ConsistencyProof(
        self, request: ppb.PeerEnvelope, context: Ctx
    ) -> pb.ConsistencyProof:
        q = self._query(request)
        out = pb.ConsistencyProof(old_size=q.old_size)
        size = out.new_size = self._size_or_latest(q.new_size, out.tree_head)
        try:
            out.hashes.extend(self.store.consistency_proof(q.old_size, size))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return out
