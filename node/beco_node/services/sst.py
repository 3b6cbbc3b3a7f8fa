"""The SST service: verifies quorum certificates and commits through the SstStore.

For a ``commit`` from the validator it checks, in order: the envelope (sender
is the membership's validator), the certificate (distinct current user-node
members, valid signatures over the same proposal digest, at least ``quorum``
VALID votes, ``sequence == current + 1``), the client's signature on the
embedded request, and runs the same state transition the voters ran
(``model.apply``) on its own copy. Only then does it hand the new state, the
change and the Merkle leaf to ``SstStore.commit`` (one Postgres transaction).
The same proposal delivered twice is stored once. Afterwards it tells every
user node (``applied``, signed) so they update their memory.

The current state of users is cached in memory (the SST is the only writer).
"""

from __future__ import annotations

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
    ProposalConflictError,
    SequenceError,
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

    def _commit_info(self, res: CommitResult, committed_ms: int) -> pb.CommitInfo:
        return pb.CommitInfo(
            proposal_id=res.proposal_id,
            sequence=res.sequence,
            leaf_index=res.leaf_index,
            tree_head=tree_head_pb(res.tree_head, self.rt.public_key),
            committed_ms=committed_ms,
            duplicate=res.duplicate,
        )

    @rpc_handler("sst.Commit")
    async def Commit(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        rt = self.rt
        ms = rt.membership
        peer.open_envelope(request, "commit", ms, rt.now_ms())
        qc = peer.parse(ppb.QuorumCertificate, request.payload)
        assert isinstance(qc, ppb.QuorumCertificate)
        prop = qc.header.proposal
        if qc.header.validator != ms.one("validator").peer_id:
            raise InvalidArgument("the certificate names another validator")
        done = self.recent.get(prop.proposal_id)
        if done is not None:
            return await self._duplicate(prop.user_id, done)
        t0 = time.perf_counter()
        current = await self._state(prop.user_id)
        cur_seq = current[0] if current else 0
        voters = peer.verify_quorum_certificate(qc, ms, cur_seq + 1)
        req = model.parse_mutation(prop.method, prop.request)
        caller = auth.verify_signature(prop.method, req)
        auth.check_sequenced_in_time(req, qc.header.validator_ts_ms, rt.settings.skew_ms)
        if peer.proposal_id(req.auth.signature) != prop.proposal_id:  # type: ignore[attr-defined]
            raise InvalidArgument("proposal id does not match the request")
        if model.target_user(prop.method, req, caller) != prop.user_id:
            raise InvalidArgument("proposal user does not match the request")
        old = None
        if current is not None:
            old = pb.UserState()
            old.ParseFromString(current[1])
        new = model.apply(
            prop.method, req, caller, old, qc.header.sequence, qc.header.validator_ts_ms
        )
        state = new.SerializeToString(deterministic=True)
        leaf = pb.LogLeaf(
            proposal_id=prop.proposal_id,
            user_id=prop.user_id,
            sequence=qc.header.sequence,
            kind=model.MUTATIONS[prop.method].kind,
            actor=caller,
            request_digest=hashlib.sha256(prop.request).digest(),
            state_digest=hashlib.sha256(state).digest(),
            validator_ts_ms=qc.header.validator_ts_ms,
            voters=sorted(voters),
            proposal_digest=peer.header_digest(qc.header),
        )
        committed_ms = rt.now_ms()
        entry = CommitEntry(
            proposal_id=prop.proposal_id,
            user_id=prop.user_id,
            sequence=qc.header.sequence,
            kind=leaf.kind,
            state=state,
            leaf_data=leaf.SerializeToString(deterministic=True),
            committed_ms=committed_ms,
        )
        try:
            res = await self.store.commit(entry)
        except SequenceError as exc:
            self.cache.pop(prop.user_id)
            raise FailedPrecondition(str(exc)) from None
        except StoreUnavailableError as exc:
            raise Unavailable(str(exc)) from None
        except ProposalConflictError as exc:
            raise AlreadyExists(str(exc)) from None
        except StoreError as exc:
            self.cache.pop(prop.user_id)
            raise BecoError(str(exc), "ABORTED") from None
        if not res.duplicate:
            self.cache.put(prop.user_id, (res.sequence, state))
        metrics.COMMIT_TIME.observe(time.perf_counter() - t0)
        metrics.TREE_SIZE.set(self.store.tree_head().tree_size)
        info = self._commit_info(res, committed_ms)
        stored = self.cache.get(prop.user_id) or (res.sequence, state)
        applied = ppb.Applied(
            user_id=prop.user_id, sequence=res.sequence, state=stored[1], commit=info
        )
        env = peer.seal("applied", applied, rt.key, rt.peer_id, rt.now_ms())
        outcome = ppb.Outcome(
            status=ppb.OUTCOME_COMMITTED, commit=info, state=stored[1], applied=env
        )
        self.recent.put(prop.proposal_id, info.SerializeToString())
        for m in ms.user_nodes:
            if m.peer_id != prop.origin:  # the origin applies the outcome it gets back
                rt.spawn(self._notify(m, env))
        log.debug(
            "committed", extra={"fields": {"proposal": prop.proposal_id, "seq": res.sequence}}
        )
        return outcome

    async def _duplicate(self, uid: str, info_bytes: bytes) -> ppb.Outcome:
        """The outcome of a proposal committed before, rebuilt from its commit info and the
        user's current state (with its notice, as after a first delivery)."""
        info = pb.CommitInfo.FromString(info_bytes)
        info.duplicate = True
        current = await self._state(uid)
        if current is None:  # pragma: no cover - a committed user always has a state
            raise Unavailable(f"user {uid} has a commit but no state")
        applied = ppb.Applied(user_id=uid, sequence=current[0], state=current[1], commit=info)
        env = peer.seal("applied", applied, self.rt.key, self.rt.peer_id, self.rt.now_ms())
        return ppb.Outcome(status=ppb.OUTCOME_COMMITTED, commit=info, state=current[1], applied=env)

    async def _notify(self, member: Any, env: ppb.PeerEnvelope) -> None:
        try:
            await ppb_grpc.UserNodeStub(self.rt.peer_channel(member)).Apply(env, timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.info("user node %s missed a commit notice: %s", member.name, exc.code().name)

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
        for uid, seq, state in await self.store.load_all_users():
            del uid
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
