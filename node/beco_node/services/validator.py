"""The validator (guardian): sequences proposals per user and gathers a quorum.

- One proposal in flight per user; the others wait in FIFO order
  (``asyncio.Lock`` wakes waiters in arrival order). Different users proceed
  in parallel.
- The proposal id is SHA-256 of the client's request signature. A re-sent request
  (same id) joins its attempt in flight; otherwise it is proposed again, and the
  SST answers the first attempt's commit or recorded failure (it commits an id
  at most once and never after recording it failed).
- Origins send the proposals they collected meanwhile in one ``ProposeBatch`` call
  (``Propose`` takes one); each proposal is decided on its own and answered with its own
  outcome, in order.
- The validator assigns ``sequence = current + 1`` and a timestamp, and queues the
  header for a round: a round takes every queued header (one per user, at most
  ``batch.MAX_BATCH`` and ``batch.BATCH_BYTES``) and starts at once when no round is in
  flight (``batch.VALIDATOR_ROUNDS``, ``batch.Batcher``), so an idle validator adds no
  wait and a busy one batches. One signed vote request per batch goes to every user node of the current
  membership in parallel; each answers one batch vote (``beco_node.batch``). Per
  change: VALIDATED at ``quorum`` voters that did not reject it; FAILED as soon as the
  quorum can no longer be reached (rejections, unreachable nodes) or at
  ``--vote-timeout-ms`` (see ``tally.Tally``). A
  failure is answered only after the SST recorded it (``RecordFailure``); if
  that is impossible the answer is UNAVAILABLE: outcome unknown.
- The VALIDATED changes of a batch go to the SST in one batch certificate; the SST
  verifies, commits them in one transaction and notifies the user nodes once. The outcome goes back to the
  origin user node, which answers the client.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc

from beco_node import batch, metrics, model, peer, tally
from beco_node.errors import BecoError, InvalidArgument
from beco_node.lru import BoundedLru
from beco_node.services.relay import refused, relayed
from beco_node.services.runtime import Runtime, rpc_handler

log = logging.getLogger("beco.validator")
# Bounds (docs/architecture.md, "Memory bounds"); a miss costs one SST query.
MAX_NOTICES = 10_000
NOTICE_BYTES = 16 * 1024 * 1024
MAX_SEQUENCES = 100_000
COMMIT_TIMEOUT_S = 10
COMMIT_RETRY_PAUSES_S = (0.5, 1.0, 2.0)
RECORD_TIMEOUT_S = 5
Ctx = grpc.aio.ServicerContext[Any, Any]


def _signed_ms(prop: ppb.Proposal) -> int:
    """The request's signed timestamp (0 if unreadable: the SST then keeps the record)."""
    try:
        return int(model.parse_mutation(prop.method, prop.request).auth.timestamp_ms)  # type: ignore[attr-defined]
    except BecoError:
        return 0


class ValidatorService(ppb_grpc.ValidatorServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.locks: dict[str, asyncio.Lock] = {}
        self.waiting: collections.Counter[str] = collections.Counter()
        self.sequences: BoundedLru[str, int] = BoundedLru(MAX_SEQUENCES, MAX_SEQUENCES * 1024)
        # The SST's signed notice of each user's last commit, forwarded with the next vote
        # request so lagging voters need not ask the SST. Bounded: oldest dropped.
        self.notices: BoundedLru[str, ppb.PeerEnvelope] = BoundedLru(
            MAX_NOTICES, NOTICE_BYTES, lambda env: env.ByteSize()
        )
        # Proposals being decided, by id: a re-sent request joins its first attempt.
        self.inflight: dict[str, asyncio.Task[ppb.Outcome]] = {}
        # Sequenced proposals waiting for a round, and the rounds in flight.
        self.batcher: batch.Batcher[_Slot] = batch.Batcher(batch.VALIDATOR_ROUNDS)
        self.kick_scheduled = False

    @property
    def pending(self) -> collections.deque[tuple[_Slot, int]]:
        return self.batcher.pending

    @property
    def rounds(self) -> int:
        return self.batcher.rounds

    @rpc_handler("validator.Propose")
    async def Propose(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        peer.open_envelope(request, "propose", self.rt.membership, self.rt.now_ms())
        prop = peer.parse(ppb.Proposal, request.payload)
        assert isinstance(prop, ppb.Proposal)
        return await asyncio.shield(self._decide(prop))

    @rpc_handler("validator.ProposeBatch")
    async def ProposeBatch(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.ProposalOutcomes:
        """An origin's proposals, each decided on its own (as if proposed alone, in this
        order): one outcome each. A proposal whose decision stopped (the validator shutting
        down) is answered OUTCOME_UNSPECIFIED: its outcome is unknown here."""
        peer.open_envelope(request, "propose_batch", self.rt.membership, self.rt.now_ms())
        props = peer.parse(ppb.ProposalBatch, request.payload)
        assert isinstance(props, ppb.ProposalBatch)
        if not 0 < len(props.proposals) <= batch.MAX_BATCH:
            raise InvalidArgument(
                f"a proposal batch holds 1 to {batch.MAX_BATCH} proposals, "
                f"got {len(props.proposals)}"
            )
        tasks = [self._decide(p) for p in props.proposals]
        # One waiter for all (``asyncio.wait`` never cancels the decisions if this call is).
        await asyncio.wait(set(tasks))
        out = ppb.ProposalOutcomes()
        for t in tasks:
            r = None if t.cancelled() else (t.exception() or t.result())
            if isinstance(r, ppb.Outcome):
                out.outcomes.append(r)
            else:
                why = "CancelledError" if r is None else type(r).__name__
                out.outcomes.append(
                    ppb.Outcome(
                        status=ppb.OUTCOME_UNSPECIFIED,
                        code="UNAVAILABLE",
                        reason=f"the validator stopped deciding it ({why})",
                    )
                )
        return out

    def _decide(self, prop: ppb.Proposal) -> asyncio.Task[ppb.Outcome]:
        """The decision of a proposal: a re-sent one joins its attempt in flight."""
        pid = prop.proposal_id
        task = self.inflight.get(pid)
        if task is None:
            # Owned by the runtime: the decision (and recording a failure) completes even
            # if the origin gives up waiting.
            task = self.rt.start(self._serialised(prop))
            self.inflight[pid] = task
            task.add_done_callback(lambda t: self._forget(pid, t))
        return task

    def _forget(self, pid: str, task: asyncio.Task[ppb.Outcome]) -> None:
        if self.inflight.get(pid) is task:
            del self.inflight[pid]

    async def _serialised(self, prop: ppb.Proposal) -> ppb.Outcome:
        uid = prop.user_id
        lock = self.locks.get(uid)
        if lock is None:
            lock = self.locks[uid] = asyncio.Lock()
        self.waiting[uid] += 1
        try:
            async with lock:
                return await self._run(prop)
        finally:
            self.waiting[uid] -= 1
            if self.waiting[uid] == 0:
                del self.waiting[uid]
                del self.locks[uid]

    def _sst(self) -> ppb_grpc.SstAsyncStub:
        return ppb_grpc.SstStub(self.rt.peer_channel(self.rt.membership.one("sst")))

    async def _current_sequence(self, uid: str) -> int:
        seq = self.sequences.get(uid)
        if seq is None:
            env = peer.seal(
                "sst_query",
                ppb.SstQuery(user_id=uid),
                self.rt.key,
                self.rt.peer_id,
                self.rt.now_ms(),
            )
            reply = await self._sst().GetUserState(env, timeout=5, wait_for_ready=True)
            seq = reply.sequence if reply.found else 0
            self.sequences.put(uid, seq)
        return seq

    def _committed(
        self,
        prop: ppb.Proposal,
        outcome: ppb.Outcome,
        notice: tuple[int, ppb.PeerEnvelope] | None = None,
    ) -> ppb.Outcome:
        """Remember a commit (the user's sequence and the SST's notice of it: its batch's,
        or the one the outcome carries)."""
        if notice is None and outcome.HasField("applied"):
            applied = peer.parse(ppb.Applied, outcome.applied.payload)
            assert isinstance(applied, ppb.Applied)
            if applied.user_id == prop.user_id:
                notice = (applied.sequence, outcome.applied)
        if notice is not None:
            self.sequences.put(prop.user_id, notice[0])
            self.notices.put(prop.user_id, notice[1])
        else:
            self.sequences.pop(prop.user_id)
        outcome.ClearField("applied")  # the origin does not need it
        metrics.PROPOSALS.labels("committed").inc()
        return outcome

    async def _fail(self, prop: ppb.Proposal, code: str, reason: str) -> ppb.Outcome:
        """Answer a definitive failure only once the SST recorded it (then the request can
        never commit later); if it committed first, answer that commit."""
        self.sequences.pop(prop.user_id)  # voters may know a newer sequence: re-read
        rec = ppb.FailureRecord(
            proposal_id=prop.proposal_id,
            code=tally.definitive_code(code),
            reason=reason,
            signed_ms=_signed_ms(prop),
        )
        env = peer.seal("record_failure", rec, self.rt.key, self.rt.peer_id, self.rt.now_ms())
        try:
            out: ppb.Outcome = await self._sst().RecordFailure(
                env, timeout=RECORD_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            metrics.PROPOSALS.labels("indeterminate").inc()
            log.warning("cannot record a failure at the SST: %s", exc.code().name)
            return ppb.Outcome(
                status=ppb.OUTCOME_FAILED,
                code="UNAVAILABLE",
                reason=f"{reason}; the SST could not record the failure "
                f"({exc.code().name}): outcome unknown, re-send the same signed request",
            )
        if out.status == ppb.OUTCOME_COMMITTED:
            return self._committed(prop, out)
        metrics.PROPOSALS.labels("failed").inc()
        return out

    async def _run(self, prop: ppb.Proposal) -> ppb.Outcome:
        rt = self.rt
        try:
            current = await self._current_sequence(prop.user_id)
        except grpc.aio.AioRpcError as exc:
            metrics.PROPOSALS.labels("indeterminate").inc()
            log.warning("SST unreachable: %s %s", exc.code().name, exc.details())
            err = relayed(exc, "the SST")
            return ppb.Outcome(
                status=ppb.OUTCOME_FAILED,
                code="UNAVAILABLE",  # nothing proposed by this attempt; an earlier one may be
                reason=f"{err.message}: outcome unknown, re-send the same signed request",
            )
        header = ppb.ProposalHeader(
            proposal=prop, sequence=current + 1, validator_ts_ms=rt.now_ms(), validator=rt.peer_id
        )
        slot = _Slot(header, self.notices.get(prop.user_id), header.ByteSize())
        self.batcher.add(slot, slot.size)
        self._kick_soon()
        try:
            res = await slot.result
        except BaseException:
            self.sequences.pop(prop.user_id)  # cancelled mid-round: re-read
            raise
        count = res.count
        if not count.reached:
            reasons = res.reasons
            if count.pending:
                reasons.append(f"{count.pending} vote(s) missing at the deadline")
            log.info(
                "proposal failed",
                extra={
                    "fields": {
                        "proposal": prop.proposal_id,
                        "valid": count.valid,
                        "quorum": count.quorum,
                    }
                },
            )
            out = await self._fail(
                prop,
                count.failure_code(),
                f"quorum not reached ({count.valid} valid of {count.quorum} needed): "
                + "; ".join(reasons),
            )
            out.valid_votes, out.invalid_votes = count.valid, count.invalid
            return out
        if res.error is not None:
            err = res.error
            if err.code in tally.INDETERMINATE_CODES:
                out = await self._fail(prop, "ABORTED", f"{err.message} (not committed)")
            else:
                out = await self._fail(prop, err.code, err.message)
            out.valid_votes = count.valid
            return out
        outcome = res.outcome
        assert outcome is not None
        if outcome.status == ppb.OUTCOME_COMMITTED:
            self._committed(prop, outcome, res.notice)
        else:  # recorded failed at the SST already
            self.sequences.pop(prop.user_id)
            metrics.PROPOSALS.labels("failed").inc()
        outcome.valid_votes = count.valid
        outcome.invalid_votes = count.invalid
        return outcome

    # ---- batches: one round of votes and one commit for the proposals collected ----
    def _kick(self) -> None:
        """Start a round for the pending proposals when none is in flight (VALIDATOR_ROUNDS):
        a proposal that finds the validator idle goes at once (no added wait); those that
        arrive meanwhile make up the next batch (``batch.Batcher``). A proposal cancelled
        while it waited is dropped."""
        while (take := self.batcher.next_batch(lambda s: not s.result.done())) is not None:
            metrics.BATCH_SIZE.observe(len(take))
            self.rt.start(self._round(take)).add_done_callback(self._round_done)

    def _kick_soon(self) -> None:
        """Kick once the proposals sequenced in this turn of the event loop are queued (an
        origin's batch, decided by one task each, then makes one round): no time passes."""
        if not self.kick_scheduled:
            self.kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_kick)

    def _scheduled_kick(self) -> None:
        self.kick_scheduled = False
        self._kick()

    def _round_done(self, task: asyncio.Task[None]) -> None:
        del task
        self.batcher.done()
        self._kick()

    async def _round(self, slots: list[_Slot]) -> None:
        try:
            await self._vote_and_commit(slots)
        except BaseException as exc:
            for s in slots:  # never leave a proposal waiting on a round that died
                if not s.result.done():
                    if isinstance(exc, Exception):
                        s.result.set_exception(exc)
                    else:
                        s.result.cancel()
            if not isinstance(exc, Exception):
                raise

    def _vote_request(self, slots: list[_Slot]) -> ppb.BatchVoteRequest:
        vreq = ppb.BatchVoteRequest(headers=[s.header for s in slots])
        size = sum(s.size for s in slots)
        seen: set[bytes] = set()
        for s in slots:  # the SST's notices of these users' last commits, within the budget
            env = s.previous
            if env is None or env.signature in seen:
                continue
            n = env.ByteSize()
            if size + n <= 2 * batch.BATCH_BYTES:
                vreq.previous.append(env)
                seen.add(env.signature)
                size += n
        return vreq

    async def _vote_and_commit(self, slots: list[_Slot]) -> None:
        rt = self.rt
        ms = rt.membership
        digests = [peer.header_digest(s.header) for s in slots]
        root = batch.root(digests)
        env = peer.seal("vote_batch", self._vote_request(slots), rt.key, rt.peer_id, rt.now_ms())
        voters = ms.user_nodes
        timeout = rt.settings.vote_timeout_ms / 1000
        t0 = time.perf_counter()

        async def ask(member: Any) -> ppb.BatchVote | str:
            try:
                stub = ppb_grpc.UserNodeStub(rt.peer_channel(member))
                vote = await stub.VoteBatch(env, timeout=timeout)
                if vote.voter != member.peer_id:
                    return f"{member.name}: vote does not match the voter"
                # Checked here although the SST checks again: one bad signature in the
                # certificate would make the SST refuse it, so a single faulty voter that
                # answers fast could otherwise fail every commit.
                try:
                    peer.verify_batch_vote(vote, ms, root)
                except BecoError as exc:
                    return f"{member.name}: {exc.message}"
                return vote
            except grpc.aio.AioRpcError as exc:
                return f"{member.name}: {exc.code().name} {exc.details()}"

        n = len(slots)
        tasks = [asyncio.ensure_future(ask(m)) for m in voters]
        count = tally.BatchTally(ms.quorum, len(voters), n)
        reasons: list[list[str]] = [[] for _ in slots]
        votes: list[ppb.BatchVote] = []
        try:
            for fut in asyncio.as_completed(tasks, timeout=timeout + 0.5):
                try:
                    res = await fut
                except TimeoutError:
                    break
                if isinstance(res, str):
                    for why in reasons:
                        why.append(res)
                    count.add_unreachable()
                    metrics.VOTES.labels("unreachable").inc(n)
                else:
                    votes.append(res)
                    rejected = {r.index: r for r in res.rejected if r.index < n}
                    count.add_vote({i: r.code for i, r in rejected.items()})
                    if rejected:
                        name = _name(ms, res.voter)
                        for i, r in rejected.items():
                            reasons[i].append(f"{name}: {r.reason}")
                    metrics.VOTES.labels("invalid").inc(len(rejected))
                    metrics.VOTES.labels("valid").inc(n - len(rejected))
                if count.decided:
                    break
        except TimeoutError:
            pass
        metrics.QUORUM_WAIT.observe(time.perf_counter() - t0)
        # Votes still on their way are not needed; let them finish in the background.
        for t in tasks:
            if not t.done():
                rt.spawn(t)
        counts = count.tallies()
        certified = [i for i in range(n) if counts[i].reached]
        for i in range(n):
            if not counts[i].reached:
                slots[i].settle(_Decided(counts[i], reasons[i]))
        if not certified:
            return
        cert = ppb.BatchCertificate(
            digests=digests,
            indexes=certified,
            headers=[slots[i].header for i in certified],
            votes=votes,
        )
        try:
            t1 = time.perf_counter()
            out = await self._commit(
                peer.seal("commit_batch", cert, rt.key, rt.peer_id, rt.now_ms())
            )
            metrics.SST_COMMIT_CALL.observe(time.perf_counter() - t1)
            if len(out.outcomes) != len(certified):
                raise BecoError(
                    f"the SST answered {len(out.outcomes)} outcomes for {len(certified)} changes",
                    "UNAVAILABLE",
                )
        except (grpc.aio.AioRpcError, BecoError) as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                log.warning("SST commit failed: %s %s", exc.code().name, exc.details())
                err = relayed(exc, "the SST")
            else:
                err = exc
            for i in certified:
                slots[i].settle(_Decided(counts[i], [], error=err))
            return
        notices = _notices(out.applied)
        for i, o in zip(certified, out.outcomes, strict=True):
            uid = slots[i].header.proposal.user_id
            if o.status == ppb.OUTCOME_REJECTED:
                err = refused(o.code, o.reason, "the SST")
                slots[i].settle(_Decided(counts[i], [], error=err))
            else:
                slots[i].settle(_Decided(counts[i], [], outcome=o, notice=notices.get(uid)))

    async def _commit(self, env: ppb.PeerEnvelope) -> ppb.BatchOutcome:
        """Send the certificate to the SST; UNAVAILABLE (e.g. PostgreSQL restarting) is
        retried a few times: committing a proposal id is idempotent."""
        for attempt in range(len(COMMIT_RETRY_PAUSES_S) + 1):
            try:
                outcome: ppb.BatchOutcome = await self._sst().CommitBatch(
                    env, timeout=COMMIT_TIMEOUT_S, wait_for_ready=True
                )
                return outcome
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == len(
                    COMMIT_RETRY_PAUSES_S
                ):
                    raise
            await asyncio.sleep(COMMIT_RETRY_PAUSES_S[attempt])
        raise AssertionError("unreachable")


@dataclass
class _Slot:
    """A sequenced proposal waiting for its batch's round."""

    header: ppb.ProposalHeader
    previous: ppb.PeerEnvelope | None  # the SST's notice of this user's last commit
    size: int
    result: asyncio.Future[_Decided] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, decided: _Decided) -> None:
        """Answer the proposal (unless it was cancelled meanwhile: nobody waits)."""
        if not self.result.done():
            self.result.set_result(decided)


@dataclass
class _Decided:
    """What a round decided for one proposal: its tally, and the SST's outcome or error."""

    count: tally.Tally
    reasons: list[str]
    outcome: ppb.Outcome | None = None
    notice: tuple[int, ppb.PeerEnvelope] | None = None  # (sequence, the SST's notice)
    error: BecoError | None = None


def _notices(envs: Iterable[ppb.PeerEnvelope]) -> dict[str, tuple[int, ppb.PeerEnvelope]]:
    """user id -> (sequence, the batch notice that carries it), from the SST's notices."""
    out: dict[str, tuple[int, ppb.PeerEnvelope]] = {}
    for env in envs:
        ab = peer.parse(ppb.AppliedBatch, env.payload)
        assert isinstance(ab, ppb.AppliedBatch)
        for a in ab.applied:
            out[a.user_id] = (a.sequence, env)
    return out


def _name(ms: Any, pid: str) -> str:
    m = ms.by_peer_id(pid)
    return str(m.name) if m is not None else pid
