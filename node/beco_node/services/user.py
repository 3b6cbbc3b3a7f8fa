"""The user node: the public Identity API, and a voter.

Reads are served from memory: every user's state is kept as serialised bytes
(compact: a few hundred bytes per user) and parsed on demand; a miss asks the
SST. At start the node streams all users from the SST. An index
``grantee -> users`` answers ListUsers without scanning everyone.

Readiness: the Identity API answers (and health reports SERVING) only once the
users are loaded. A node removed from the membership drops its users and
answers UNAVAILABLE ("not a member"); re-added, it loads them again first.

A mutation is authenticated (signature, skew, replay), checked against the
limits and the node's copy of the user (``model.apply``), then proposed to the
validator; the node answers the client when the outcome comes back (COMMITTED
-> the new view; FAILED/REJECTED -> the matching gRPC status). Proposals that
arrive while this node's forwards to the validator are in flight go together in
one ``ProposeBatch`` call (``Forwarder``: ``batch.Batcher``'s policy, so an idle
node adds no wait); each keeps its own outcome.

As a voter, the node re-checks the client's signature and runs ``model.apply``
against its own copy at the sequence the validator assigned; if its copy lags
(a commit notice not yet arrived) it refreshes the user from the SST first.
Its vote (VALID, or INVALID with the reason) is signed with its peer key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco.v1 import link_pb2 as lpb
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc

from beco_node import auth, batch, limits, metrics, model, peer, session, tally
from beco_node.auth import Authenticator, check_validator_clock
from beco_node.errors import BecoError, InvalidArgument, NotFound, Unauthenticated, Unavailable
from beco_node.lru import BoundedLru
from beco_node.membership import Member
from beco_node.services.relay import PROPOSE_PASSED_ON, QUERY_PASSED_ON, relayed
from beco_node.services.runtime import Runtime, rpc_handler

log = logging.getLogger("beco.user")
# Reads' replies per user (model.Views), rebuilt when the user's stored bytes change.
VIEW_CACHE_ENTRIES = 10_000
VIEW_CACHE_BYTES = 32 * 1024 * 1024
# Signatures of the SST notices applied (a notice arrives from the SST and again inside the
# validator's vote requests): the second copy is neither opened nor applied again.
NOTICES_APPLIED = 4096
Ctx = grpc.aio.ServicerContext[Any, Any]
M = model.SERVICE


class UserStore:
    """The in-memory users: id -> (sequence, serialised state), plus the grantee index."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[int, bytes]] = {}
        self.grants: dict[str, set[str]] = {}  # grantee -> users granting it some access

    def get(self, uid: str) -> pb.UserState | None:
        hit = self.users.get(uid)
        if hit is None:
            return None
        st = pb.UserState()
        st.ParseFromString(hit[1])
        return st

    def sequence(self, uid: str) -> int:
        hit = self.users.get(uid)
        return hit[0] if hit else 0

    def put(self, seq: int, data: bytes, state: pb.UserState | None = None) -> bool:
        """Store a state if it is newer than what we hold; True if stored."""
        if state is None:
            state = pb.UserState()
            state.ParseFromString(data)
        uid = state.user_id
        old = self.users.get(uid)
        if old is not None and old[0] >= seq:
            return False
        if old is not None:
            prev = pb.UserState()
            prev.ParseFromString(old[1])
            for g in _grantees(prev):
                s = self.grants.get(g)
                if s is not None:
                    s.discard(uid)
                    if not s:
                        del self.grants[g]
        self.users[uid] = (seq, data)
        for g in _grantees(state):
            self.grants.setdefault(g, set()).add(uid)
        return True


# How long an origin waits for the validator's answer to a forward (as for one proposal).
FORWARD_TIMEOUT_S = 60


class Forwarder:
    """This origin's proposals to the validator. A proposal that finds no forward in flight
    goes at once; those that arrive while forwards are in flight go together in the next
    ``ProposeBatch`` call (``batch.Batcher``: at most ``batch.MAX_ROUNDS`` calls in
    flight, ``batch.MAX_BATCH`` proposals and ``batch.BATCH_BYTES`` a call). Each proposal
    keeps its own outcome; the same proposal id sent again while it waits joins it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.batcher: batch.Batcher[tuple[ppb.Proposal, asyncio.Future[ppb.Outcome]]] = (
            batch.Batcher()
        )
        self.waiting: dict[str, asyncio.Future[ppb.Outcome]] = {}

    async def propose(self, prop: ppb.Proposal) -> ppb.Outcome:
        """The validator's outcome for ``prop``; raises ``BecoError`` when the call to the
        validator failed (the outcome is then unknown here)."""
        pid = prop.proposal_id
        fut = self.waiting.get(pid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.waiting[pid] = fut
            fut.add_done_callback(lambda f: self._forget(pid, f))
            self.batcher.add((prop, fut), prop.ByteSize())
            self._kick()
        # Shielded: a caller that gives up does not take the answer from a re-send.
        return await asyncio.shield(fut)

    def _forget(self, pid: str, fut: asyncio.Future[ppb.Outcome]) -> None:
        if self.waiting.get(pid) is fut:
            del self.waiting[pid]
        if not fut.cancelled():
            fut.exception()  # retrieved: nobody may be waiting any more

    def _kick(self) -> None:
        while (take := self.batcher.next_batch()) is not None:
            self.rt.start(self._forward(take)).add_done_callback(self._forward_done)

    def _forward_done(self, task: asyncio.Task[None]) -> None:
        del task
        self.batcher.done()
        self._kick()

    async def _forward(self, items: list[tuple[ppb.Proposal, asyncio.Future[ppb.Outcome]]]) -> None:
        try:
            outcomes = await self._call([p for p, _ in items])
        except BaseException as exc:
            err = (
                exc
                if isinstance(exc, BecoError)
                else Unavailable(f"the validator call failed: {exc!r}")
            )
            for _, fut in items:  # each its own error: they are raised in different tasks
                if not fut.done():
                    fut.set_exception(BecoError(err.message, err.code))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), out in zip(items, outcomes, strict=True):
            if not fut.done():
                fut.set_result(out)

    async def _call(self, props: list[ppb.Proposal]) -> list[ppb.Outcome]:
        rt = self.rt
        validator: Member = rt.membership.one("validator")
        stub = ppb_grpc.ValidatorStub(rt.peer_channel(validator))
        t0 = time.perf_counter()
        env = peer.seal(
            "propose_batch", ppb.ProposalBatch(proposals=props), rt.key, rt.peer_id, rt.now_ms()
        )
        try:
            reply: ppb.ProposalOutcomes = await stub.ProposeBatch(
                env, timeout=FORWARD_TIMEOUT_S, wait_for_ready=True
            )
            metrics.FORWARD_TIME.observe(time.perf_counter() - t0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise relayed(exc, "the validator", PROPOSE_PASSED_ON) from None
            # A validator of the previous version (a rolling upgrade): one call each.
            return list(await asyncio.gather(*(self._one(stub, p) for p in props)))
        if len(reply.outcomes) != len(props):
            raise Unavailable(
                f"the validator answered {len(reply.outcomes)} outcomes for {len(props)} proposals"
            )
        return list(reply.outcomes)

    async def _one(self, stub: ppb_grpc.ValidatorAsyncStub, prop: ppb.Proposal) -> ppb.Outcome:
        rt = self.rt
        env = peer.seal("propose", prop, rt.key, rt.peer_id, rt.now_ms())
        try:
            out: ppb.Outcome = await stub.Propose(
                env, timeout=FORWARD_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            err = relayed(exc, "the validator", PROPOSE_PASSED_ON)
            return ppb.Outcome(status=ppb.OUTCOME_UNSPECIFIED, code=err.code, reason=err.message)
        return out


def _grantees(st: pb.UserState) -> set[str]:
    out: set[str] = set()
    for fs in (st.first_name, st.middle_names, st.last_name):
        out.update(fs.editors)
        out.update(fs.viewers)
    return out


class UserNode:
    """Shared state of the two servicers of a user node."""

    def __init__(self, rt: Runtime, background_sync: bool = True) -> None:
        self.rt = rt
        # Staleness: answer from memory only while the last catch-up with the SST was asked
        # for at most ``staleness_bound_s`` ago; catch up every ``sync_interval_s``
        # (settings --staleness-bound-ms, --sync-interval-ms).
        self.staleness_bound_s = rt.settings.staleness_bound_ms / 1000
        self.sync_interval_s = rt.settings.sync_interval_ms / 1000
        self.background_sync = background_sync  # False: tests call catch_up themselves
        self.store = UserStore()
        self.views: BoundedLru[str, model.Views] = BoundedLru(
            VIEW_CACHE_ENTRIES, VIEW_CACHE_BYTES, model.Views.size
        )
        self.authn = Authenticator(rt.settings.skew_ms)
        # Read sessions (OpenSession): in memory only, so a restart makes clients re-open.
        self.sessions = session.SessionTable(rt.settings.session_ttl_ms, rt.settings.max_sessions)
        self.loaded = asyncio.Event()
        self._loader: asyncio.Task[None] | None = None
        rt.set_ready("loaded", "this user node is loading the users from the SST")
        rt.on_membership_change.append(self._membership_changed)
        # proposals this node originated and is waiting on: id -> (request digest, caller);
        # its own vote then skips re-verifying the client signature it already checked.
        self.own: dict[str, tuple[bytes, str]] = {}
        self.notices_applied: BoundedLru[bytes, bool] = BoundedLru(
            NOTICES_APPLIED, NOTICES_APPLIED * 1024
        )
        self.forwarder = Forwarder(rt)
        # Catch-up by log position: every commit before ``synced_size`` is applied, as of
        # the monotonic time ``synced_at`` when that catch-up was asked for.
        self.synced_size = 0
        self.synced_at = -math.inf
        self.known_head = 0  # the largest SST tree size heard of
        self._sync: asyncio.Task[None] | None = None  # one catch-up loop, however often loaded
        metrics.SYNC_AGE.set_function(lambda: min(self.rt.monotonic() - self.synced_at, 1e9))

    def sst_stub(self) -> ppb_grpc.SstAsyncStub:
        return ppb_grpc.SstStub(self.rt.peer_channel(self.rt.membership.one("sst")))

    def query(self, q: ppb.SstQuery) -> ppb.PeerEnvelope:
        return peer.seal("sst_query", q, self.rt.key, self.rt.peer_id, self.rt.now_ms())

    async def sst_call(self, method: str, q: ppb.SstQuery) -> Any:
        try:
            return await getattr(self.sst_stub(), method)(
                self.query(q), timeout=10, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            raise relayed(exc, "the SST", QUERY_PASSED_ON) from None

    async def fetch(self, uid: str) -> pb.UserState | None:
        """The user from the SST (a miss, or a lagging copy)."""
        reply: ppb.UserStateReply = await self.sst_call("GetUserState", ppb.SstQuery(user_id=uid))
        if not reply.found:
            return None
        st = pb.UserState()
        st.ParseFromString(reply.state)
        self.store.put(reply.sequence, reply.state, st)
        metrics.USERS.set(len(self.store.users))
        return self.store.get(uid)

    def fresh(self) -> bool:
        """Whether memory holds every commit published more than the staleness bound ago."""
        return self.rt.monotonic() - self.synced_at <= self.staleness_bound_s

    async def user(self, uid: str) -> pb.UserState | None:
        """The user, within the staleness bound: from memory while the catch-up keeps up,
        else from the SST (Unavailable if it cannot be reached: never a stale answer)."""
        return (await self.user_from(uid))[0]

    async def user_from(self, uid: str) -> tuple[pb.UserState | None, bool]:
        """``user``, and whether it came from the SST just now."""
        st = self.store.get(uid)
        if st is not None and self.fresh():
            return st, False
        try:
            return await self.fetch(uid), True
        except BecoError as exc:
            if exc.code not in tally.INDETERMINATE_CODES:
                raise
            raise Unavailable(
                f"this node may be behind (last caught up with the SST "
                f"{self.rt.monotonic() - self.synced_at:.0f} s ago) and {exc.message}"
            ) from None

    async def user_views(self, uid: str) -> model.Views | None:
        """The user's views (``user``'s state, same staleness rule), cached while its
        stored bytes are unchanged: a read of a hot user neither parses nor builds."""
        hit = self.store.users.get(uid)
        if hit is not None and self.fresh():
            v = self.views.get(uid)
            if v is not None and v.data == hit[1]:
                return v
        st = await self.user(uid)
        if st is None:
            return None
        hit = self.store.users.get(uid)
        if hit is None or hit[0] != st.sequence:  # not what the store holds: not cached
            return model.Views(st, st.SerializeToString())
        v = model.Views(st, hit[1])
        self.views.put(uid, v)
        return v

    def start_loading(self) -> None:
        """(Re)load every user from the SST in the background; readiness follows."""
        if self._loader is not None and not self._loader.done():
            return
        self._loader = asyncio.ensure_future(self.load_all())

    def _membership_changed(self, ms: Any) -> None:
        del ms
        if not self.rt.is_member:
            if self.loaded.is_set() or self._loader is not None:
                self._drop()
        elif not self.loaded.is_set():
            self.start_loading()

    def _drop(self) -> None:
        """Removed from the membership: forget the network's data until re-added."""
        if self._loader is not None:
            self._loader.cancel()
            self._loader = None
        if self.loaded.is_set() or self.store.users:
            log.info("not a member any more: dropping %d users", len(self.store.users))
        self.loaded.clear()
        self.store = UserStore()
        self.notices_applied = BoundedLru(NOTICES_APPLIED, NOTICES_APPLIED * 1024)
        self.views = BoundedLru(VIEW_CACHE_ENTRIES, VIEW_CACHE_BYTES, model.Views.size)
        self.synced_at = -math.inf  # what it held is gone: nothing is fresh until reloaded
        metrics.USERS.set(0)
        self.rt.set_ready("loaded", "this user node must reload the users from the SST")

    async def load_all(self) -> None:
        """Stream every user from the SST at start (retried until the SST answers), then
        keep catching up by log position in the background (``sync_loop``)."""
        delay = 0.2
        while True:
            try:
                started = self.rt.monotonic()
                head: pb.TreeHead = await self.sst_stub().TreeHead(
                    self.query(ppb.SstQuery()), timeout=10
                )
                n = 0
                async for rep in self.sst_stub().LoadUsers(self.query(ppb.SstQuery())):
                    self.store.put(rep.sequence, rep.state)
                    n += 1
                metrics.USERS.set(len(self.store.users))
                log.info("users loaded from the SST", extra={"fields": {"users": n}})
                # Every commit before the head read first is in what was streamed.
                self._synced(head.tree_size, head.tree_size, started)
                self.loaded.set()
                self.rt.set_ready("loaded", None)
                break
            except grpc.aio.AioRpcError as exc:
                log.info("waiting for the SST: %s", exc.code().name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.background_sync and (self._sync is None or self._sync.done()):
            self._sync = self.rt.start(self.sync_loop(self.sync_interval_s))

    def _synced(self, size: int, head: int, started: float) -> None:
        self.synced_size = size
        self.synced_at = max(self.synced_at, started)
        self.heard_of(head)

    def heard_of(self, tree_size: int) -> None:
        self.known_head = max(self.known_head, tree_size)
        metrics.APPLY_LAG.set(max(0, self.known_head - self.synced_size))

    async def catch_up(self) -> None:
        """Apply every commit the SST published since ``synced_size`` (by log position)."""
        started = self.rt.monotonic()
        while True:
            reply: ppb.ChangesReply = await self.sst_call(
                "Changes", ppb.SstQuery(tree_size=self.synced_size)
            )
            if reply.head_size < self.synced_size:  # another log (a new database): start over
                log.warning("the SST's log is shorter than what this node applied: resyncing")
                self.synced_size = 0
                continue
            for rep in reply.users:
                self.apply_commit(rep.sequence, rep.state)
            self._synced(reply.next_size, reply.head_size, started)
            if reply.next_size >= reply.head_size:
                return

    async def sync_loop(self, interval_s: float) -> None:
        """Catch up every ``interval_s``: commit notices lost, a pause or a restart leave
        this node behind for at most the staleness bound."""
        while True:
            try:
                await self.catch_up()
            except BecoError as exc:
                log.info("catch-up with the SST failed: %s", exc.message)
            await asyncio.sleep(interval_s)

    def apply_commit(
        self, seq: int, data: bytes, uid: str = "", state: pb.UserState | None = None
    ) -> None:
        """Store a user's committed state if newer (``uid``, when known, skips parsing an
        older one; ``state``: ``data`` parsed already)."""
        if uid and self.store.sequence(uid) >= seq:
            return
        if self.store.put(seq, data, state):
            metrics.USERS.set(len(self.store.users))

    async def outcome(self, proposal_id: str) -> ppb.Outcome:
        """The durable outcome of a proposal at the SST (status UNSPECIFIED: none yet)."""
        out: ppb.Outcome = await self.sst_call("GetOutcome", ppb.SstQuery(proposal_id=proposal_id))
        return out

    async def record_failure(
        self, proposal_id: str, code: str, reason: str, signed_ms: int
    ) -> ppb.Outcome:
        """Make a refusal definitive at the SST before answering it (or learn it committed).
        ``signed_ms``: the request's signed timestamp (the SST prunes the record once the
        request can no longer commit)."""
        env = peer.seal(
            "record_failure",
            ppb.FailureRecord(
                proposal_id=proposal_id, code=code, reason=reason, signed_ms=signed_ms
            ),
            self.rt.key,
            self.rt.peer_id,
            self.rt.now_ms(),
        )
        try:
            out: ppb.Outcome = await self.sst_stub().RecordFailure(
                env, timeout=10, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"{reason}; but the SST could not record it ({exc.code().name}): "
                "outcome unknown, re-send the same signed request"
            ) from None
        return out


class IdentityService(pb_grpc.IdentityServicer):
    def __init__(self, node: UserNode) -> None:
        self.node = node
        self.rt = node.rt

    def _auth(self, method: str, request: Any) -> str:
        """A read's caller: by its session MAC when it carries one, else its signature."""
        if request.HasField("session"):
            sid, counter, tag, digest = session.take(request)
            return self.node.sessions.authenticate(
                method, sid, counter, tag, digest, self._session_ms()
            )
        return self.node.authn.authenticate(method, request, self.rt.now_ms())

    def _session_ms(self) -> int:
        """Session lifetimes run on the monotonic clock (a wall-clock step cannot stretch them)."""
        return int(self.rt.monotonic() * 1000)

    async def Calls(  # type: ignore[override]
        self, request_iterator: AsyncIterator[lpb.LinkFrame], context: Ctx
    ) -> None:
        """The unary methods of this service, many on one stream (beco_node.calls): each
        frame runs the same gated handler as its unary call."""
        await self.rt.call_server.Link(request_iterator, context)

    @rpc_handler("OpenSession")
    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Ctx
    ) -> pb.OpenSessionResponse:
        caller = self.node.authn.authenticate(model.OPEN_SESSION, request, self.rt.now_ms())
        opened = self.node.sessions.open(
            caller, request.client_public_key, request.auth.signature, self._session_ms()
        )
        return pb.OpenSessionResponse(
            session_id=opened.session_id,
            node_public_key=opened.node_public_key,
            ttl_ms=opened.ttl_ms,
            window=opened.window,
        )

    async def _mutate(self, method: str, request: Any) -> pb.MutationResponse:
        node = self.node
        now = self.rt.now_ms()
        caller, admission = node.authn.admit(method, request, now)
        pid = peer.proposal_id(request.auth.signature)
        if admission in (auth.Admission.EXPIRED, auth.Admission.EARLY):
            reason = node.authn.skew_message(request, now)
            if now - request.auth.timestamp_ms > auth.admission_horizon_ms(node.authn.skew_ms):
                # No honest quorum votes for it any more: look its outcome up, record nothing.
                out = await node.outcome(pid)
                if out.status == ppb.OUTCOME_UNSPECIFIED:
                    raise Unauthenticated(reason)
            else:
                out = await node.record_failure(
                    pid, "UNAUTHENTICATED", reason, request.auth.timestamp_ms
                )
            return self._answer(out, caller)
        model.check_limits(method, request)  # refusals on content alone can never commit
        uid = model.target_user(method, request, caller)
        from_sst = False
        try:
            # Early check against our copy: refuses what cannot pass without a round of votes.
            state, from_sst = await node.user_from(uid)
            self._check(method, request, caller, state)
        except BecoError as exc:
            if exc.code in tally.INDETERMINATE_CODES:
                raise
            # Refuse only from the SST's current state (the one just fetched, if it was),
            # and durably (an earlier attempt of the same request may be in flight).
            if not from_sst:
                state = await node.fetch(uid)
            try:
                self._check(method, request, caller, state)
            except BecoError as again:
                return self._answer(
                    await node.record_failure(
                        pid, again.code, again.message, request.auth.timestamp_ms
                    ),
                    caller,
                )
        prop = ppb.Proposal(
            proposal_id=pid,
            user_id=uid,
            kind=model.MUTATIONS[method].kind,
            method=method,
            request=request.SerializeToString(),
            origin=self.rt.peer_id,
        )
        node.own[pid] = (hashlib.sha256(prop.request).digest(), caller)
        try:
            outcome = await node.forwarder.propose(prop)
        except BecoError as err:  # the validator did not answer
            outcome = await self._lookup_after(pid, err.message)
        finally:
            node.own.pop(pid, None)
        if outcome.status == ppb.OUTCOME_UNSPECIFIED:  # the validator has none
            outcome = await self._lookup_after(pid, outcome.reason or "no outcome")
        return self._answer(outcome, caller)

    def _check(self, method: str, request: Any, caller: str, state: pb.UserState | None) -> None:
        seq = (state.sequence + 1) if state else 1
        model.apply(method, request, caller, state, seq, self.rt.now_ms())

    async def _lookup_after(self, pid: str, problem: str) -> ppb.Outcome:
        """After an indeterminate answer: the durable outcome if there is one yet."""
        try:
            out = await self.node.outcome(pid)
        except BecoError:
            out = ppb.Outcome()
        if out.status == ppb.OUTCOME_UNSPECIFIED:
            raise Unavailable(
                f"{problem}: outcome unknown, re-send the same signed request "
                f"(proposal id {pid}) or ask GetOutcome"
            )
        return out

    def _answer(self, outcome: ppb.Outcome, caller: str) -> pb.MutationResponse:
        if outcome.status != ppb.OUTCOME_COMMITTED:
            raise BecoError(
                outcome.reason or "the change was not committed", outcome.code or "ABORTED"
            )
        new = pb.UserState()
        new.ParseFromString(outcome.state)
        self.node.apply_commit(new.sequence, outcome.state, new.user_id, new)
        return pb.MutationResponse(user=model.view(new, caller), commit=outcome.commit)

    @rpc_handler("CreateUser")
    async def CreateUser(self, request: pb.CreateUserRequest, context: Ctx) -> pb.MutationResponse:
        return await self._mutate(model.CREATE_USER, request)

    @rpc_handler("UpdateFirstName")
    async def UpdateFirstName(
        self, request: pb.UpdateFirstNameRequest, context: Ctx
    ) -> pb.MutationResponse:
        return await self._mutate(model.UPDATE_FIRST, request)

    @rpc_handler("UpdateMiddleNames")
    async def UpdateMiddleNames(
        self, request: pb.UpdateMiddleNamesRequest, context: Ctx
    ) -> pb.MutationResponse:
        return await self._mutate(model.UPDATE_MIDDLE, request)

    @rpc_handler("UpdateLastName")
    async def UpdateLastName(
        self, request: pb.UpdateLastNameRequest, context: Ctx
    ) -> pb.MutationResponse:
        return await self._mutate(model.UPDATE_LAST, request)

    @rpc_handler("GrantAccess")
    async def GrantAccess(self, request: pb.AccessRequest, context: Ctx) -> pb.MutationResponse:
        return await self._mutate(model.GRANT, request)

    @rpc_handler("RevokeAccess")
    async def RevokeAccess(self, request: pb.AccessRequest, context: Ctx) -> pb.MutationResponse:
        return await self._mutate(model.REVOKE, request)

    @rpc_handler("GetUser")
    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.User:
        caller = self._auth(M + "GetUser", request)
        limits.check_user_id("user_id", request.user_id)
        views = await self.node.user_views(request.user_id)
        if views is None:
            raise NotFound(f"no user {request.user_id}")
        return views.view(caller)

    @rpc_handler("ListUsers")
    async def ListUsers(self, request: pb.ListUsersRequest, context: Ctx) -> pb.ListUsersResponse:
        caller = self._auth(M + "ListUsers", request)
        size = limits.page_size(request.page_size)
        if not self.node.fresh():  # within the staleness bound, or from the SST, or not at all
            await self.node.catch_up()
        store = self.node.store
        ids = set(store.grants.get(caller, ()))
        if caller in store.users:
            ids.add(caller)
        ordered = sorted(i for i in ids if i > request.page_token)
        out = pb.ListUsersResponse()
        for uid in ordered[:size]:
            st = store.get(uid)
            if st is not None and model.can_see_user(st, caller):
                out.users.append(model.view(st, caller))
        if len(ordered) > size:
            out.next_page_token = ordered[size - 1]
        return out

    @rpc_handler("GetHistory")
    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Ctx
    ) -> pb.GetHistoryResponse:
        self._auth(M + "GetHistory", request)
        limits.check_user_id("user_id", request.user_id)
        q = ppb.SstQuery(
            user_id=request.user_id,
            page_size=limits.page_size(request.page_size),
            after_sequence=limits.sequence_token(request.page_token),
        )
        st = await self.node.user(request.user_id)
        if st is None:
            raise NotFound(f"no user {request.user_id}")
        # The log leaves hold digests only, so anyone who may see the user exists
        # may see its change history (kinds, sequences, leaf indexes).
        reply: pb.GetHistoryResponse = await self.node.sst_call("History", q)
        return reply

    @rpc_handler("GetTreeHead")
    async def GetTreeHead(self, request: pb.GetTreeHeadRequest, context: Ctx) -> pb.TreeHead:
        self._auth(M + "GetTreeHead", request)
        th: pb.TreeHead = await self.node.sst_call("TreeHead", ppb.SstQuery())
        return th

    @rpc_handler("GetInclusionProof")
    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Ctx
    ) -> pb.InclusionProof:
        self._auth(M + "GetInclusionProof", request)
        q = ppb.SstQuery(leaf_index=request.leaf_index, tree_size=request.tree_size)
        proof: pb.InclusionProof = await self.node.sst_call("InclusionProof", q)
        return proof

    @rpc_handler("GetConsistencyProof")
    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Ctx
    ) -> pb.ConsistencyProof:
        self._auth(M + "GetConsistencyProof", request)
        if request.new_size and request.old_size > request.new_size:
            raise InvalidArgument("old_size must not exceed new_size")
        q = ppb.SstQuery(old_size=request.old_size, new_size=request.new_size)
        proof: pb.ConsistencyProof = await self.node.sst_call("ConsistencyProof", q)
        return proof

    @rpc_handler("GetOutcome")
    async def GetOutcome(
        self, request: pb.GetOutcomeRequest, context: Ctx
    ) -> pb.GetOutcomeResponse:
        self._auth(M + "GetOutcome", request)
        pid = request.proposal_id
        if len(pid) != 64 or any(c not in "0123456789abcdef" for c in pid):
            raise InvalidArgument("proposal_id must be 64 lowercase hex digits")
        return public_outcome(pid, await self.node.outcome(pid))


def public_outcome(pid: str, out: ppb.Outcome) -> pb.GetOutcomeResponse:
    """The SST's outcome of a proposal as the public API states it."""
    if out.status == ppb.OUTCOME_COMMITTED:
        return pb.GetOutcomeResponse(
            proposal_id=pid, status=pb.PROPOSAL_STATUS_COMMITTED, commit=out.commit
        )
    if out.status == ppb.OUTCOME_FAILED and out.code not in tally.INDETERMINATE_CODES:
        return pb.GetOutcomeResponse(
            proposal_id=pid, status=pb.PROPOSAL_STATUS_FAILED, code=out.code, reason=out.reason
        )
    return pb.GetOutcomeResponse(proposal_id=pid, status=pb.PROPOSAL_STATUS_UNKNOWN)


class VoterService(ppb_grpc.UserNodeServicer):
    def __init__(self, node: UserNode) -> None:
        self.node = node
        self.rt = node.rt

    @rpc_handler("user.VoteBatch")
    async def VoteBatch(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.BatchVote:
        """Check every change of the batch on its own; sign once over the batch root."""
        rt = self.rt
        peer.open_envelope(request, "vote_batch", rt.membership, rt.now_ms())
        vreq = peer.parse(ppb.BatchVoteRequest, request.payload)
        assert isinstance(vreq, ppb.BatchVoteRequest)
        if not 1 <= len(vreq.headers) <= batch.MAX_BATCH:
            raise InvalidArgument(f"a batch holds 1 to {batch.MAX_BATCH} changes")
        for env in vreq.previous:
            self._apply_notice(env)
        root = batch.root([peer.header_digest(h) for h in vreq.headers])
        results = await self._check_all(list(vreq.headers))
        rejected = [
            batch.Rejection(i, exc.code, exc.message)
            for i, exc in enumerate(results)
            if exc is not None
        ]
        metrics.VOTES.labels("valid").inc(len(results) - len(rejected))
        metrics.VOTES.labels("invalid").inc(len(rejected))
        return peer.sign_batch_vote(root, rejected, rt.key, rt.peer_id)

    async def _check_all(self, headers: list[ppb.ProposalHeader]) -> list[BecoError | None]:
        """This voter's verdict on each change: None (VALID) or why it is INVALID. Changes
        are checked in this call (no task each); only users whose copy lags wait, together,
        for the SST's state."""
        verdicts: list[BecoError | None] = []
        lagging: list[tuple[int, ppb.ProposalHeader, Any, str]] = []
        users: set[str] = set()
        for i, h in enumerate(headers):
            uid = h.proposal.user_id
            first = uid not in users
            users.add(uid)
            verdicts.append(None)
            try:
                req, caller = self._admit(h, first)
                state = self.node.store.get(uid)
                if (state.sequence if state else 0) != h.sequence - 1:
                    lagging.append((i, h, req, caller))
                    continue
                self._apply(h, req, caller, state)
            except BecoError as exc:
                verdicts[i] = exc
        if lagging:
            fetched = await asyncio.gather(
                *(self.node.fetch(h.proposal.user_id) for _, h, _, _ in lagging),
                return_exceptions=True,
            )
            for (i, h, req, caller), st in zip(lagging, fetched, strict=True):
                try:
                    if isinstance(st, BaseException):
                        raise st
                    self._apply(h, req, caller, st)
                except BecoError as exc:
                    verdicts[i] = exc
        return verdicts

    def _admit(self, header: ppb.ProposalHeader, first: bool) -> tuple[Any, str]:
        """The checks of one change that need no user state: its request and caller."""
        rt = self.rt
        prop = header.proposal
        if not first:
            raise InvalidArgument("two changes of one user in one batch")
        req = model.parse_mutation(prop.method, prop.request)
        mine = self.node.own.get(prop.proposal_id)
        if mine is not None and mine[0] == hashlib.sha256(prop.request).digest():
            caller = mine[1]  # verified when the client sent it to us
        else:
            caller = auth.verify_signature(prop.method, req)
        if peer.proposal_id(req.auth.signature) != prop.proposal_id:  # type: ignore[attr-defined]
            raise InvalidArgument("proposal id does not match the request")
        if model.target_user(prop.method, req, caller) != prop.user_id:
            raise InvalidArgument("proposal user does not match the request")
        # An honest quorum only votes for requests sequenced now, signed just before.
        check_validator_clock(req, header.validator_ts_ms, rt.now_ms(), rt.settings.skew_ms)
        return req, caller

    @staticmethod
    def _apply(
        header: ppb.ProposalHeader, req: Any, caller: str, state: pb.UserState | None
    ) -> None:
        prop = header.proposal
        model.apply(prop.method, req, caller, state, header.sequence, header.validator_ts_ms)

    def _apply_notice(self, env: ppb.PeerEnvelope) -> None:
        """Apply an SST notice the validator forwarded (checked like any notice), unless
        this node applied it already (the vote request's envelope covers its bytes)."""
        if (
            env.kind not in ("applied", "applied_batch")
            or env.signature in self.node.notices_applied
        ):
            return
        try:
            peer.open_envelope(env, env.kind, self.rt.membership, self.rt.now_ms())
        except BecoError:
            return  # not from the SST, or too old: fall back to asking the SST
        self._apply_payload(env)

    def _apply_payload(self, env: ppb.PeerEnvelope) -> None:
        """Apply a notice that opened (its signature verified)."""
        if env.signature in self.node.notices_applied:
            return
        if env.kind == "applied":
            one = peer.parse(ppb.Applied, env.payload)
            assert isinstance(one, ppb.Applied)
            applied = [one]
        else:
            many = peer.parse(ppb.AppliedBatch, env.payload)
            assert isinstance(many, ppb.AppliedBatch)
            applied = list(many.applied)
        for a in applied:
            self.node.apply_commit(a.sequence, a.state, a.user_id)
        if applied:
            self.node.heard_of(max(a.commit.tree_head.tree_size for a in applied))
        self.node.notices_applied.put(env.signature, True)

    @rpc_handler("user.ApplyBatch")
    async def ApplyBatch(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.ApplyReply:
        peer.open_envelope(request, "applied_batch", self.rt.membership, self.rt.now_ms())
        self._apply_payload(request)
        metrics.TREE_SIZE.set(self.node.known_head)
        return ppb.ApplyReply(tree_size=self.node.known_head)
