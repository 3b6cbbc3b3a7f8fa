"""The validator (guardian): sequences proposals per user and gathers a quorum.

- One proposal in flight per user; the others wait in FIFO order
  (``asyncio.Lock`` wakes waiters in arrival order). Different users proceed
  in parallel.
- The proposal id is SHA-256 of the client's request signature. A re-sent request
  (same id) joins its attempt in flight; otherwise it is proposed again, and the
  SST answers the first attempt's commit or recorded failure (it commits an id
  at most once and never after recording it failed).
- The validator assigns ``sequence = current + 1`` and a timestamp, signs the
  header, and fans it out to every user node of the current membership in
  parallel over persistent channels. VALIDATED at ``quorum`` VALID votes;
  FAILED as soon as the quorum can no longer be reached (INVALID votes,
  unreachable nodes) or at ``--vote-timeout-ms`` (see ``tally.Tally``). A
  failure is answered only after the SST recorded it (``RecordFailure``); if
  that is impossible the answer is UNAVAILABLE: outcome unknown.
- A VALIDATED proposal goes to the SST with its quorum certificate; the SST
  verifies, commits and notifies the user nodes. The outcome goes back to the
  origin user node, which answers the client.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import grpc
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc

from beco_node import metrics, model, peer, tally
from beco_node.errors import BecoError
from beco_node.lru import BoundedLru
from beco_node.services.relay import relayed
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

    @rpc_handler("validator.Propose")
    async def Propose(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        peer.open_envelope(request, "propose", self.rt.membership, self.rt.now_ms())
        prop = peer.parse(ppb.Proposal, request.payload)
        assert isinstance(prop, ppb.Proposal)
        pid = prop.proposal_id
        task = self.inflight.get(pid)
        if task is None:
            # Owned by the runtime: the decision (and recording a failure) completes even
            # if the origin gives up waiting.
            task = self.rt.start(self._serialised(prop))
            self.inflight[pid] = task
            task.add_done_callback(lambda t: self._forget(pid, t))
        return await asyncio.shield(task)

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

    def _committed(self, prop: ppb.Proposal, outcome: ppb.Outcome) -> ppb.Outcome:
        """Remember a commit (the user's sequence and the SST's notice of it)."""
        applied = peer.parse(ppb.Applied, outcome.applied.payload)
        assert isinstance(applied, ppb.Applied)
        if outcome.HasField("applied") and applied.user_id == prop.user_id:
            self.sequences.put(prop.user_id, applied.sequence)
            self.notices.put(prop.user_id, outcome.applied)
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
        ms = rt.membership
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
        digest = peer.header_digest(header)
        vreq = ppb.VoteRequest(header=header)
        prev = self.notices.get(prop.user_id)
        if prev is not None:
            vreq.previous.CopyFrom(prev)
        env = peer.seal("vote_request", vreq, rt.key, rt.peer_id, rt.now_ms())
        voters = ms.user_nodes
        timeout = rt.settings.vote_timeout_ms / 1000
        t0 = time.perf_counter()

        async def ask(member: Any) -> ppb.Vote | str:
            try:
                stub = ppb_grpc.UserNodeStub(rt.peer_channel(member))
                vote = await stub.Vote(env, timeout=timeout)
                if not peer.vote_is_from(vote, member, digest):
                    return f"{member.name}: vote does not match the proposal or the voter"
                # Checked here although the SST checks again: one bad signature in the
                # certificate would make the SST refuse it, so a single faulty voter that
                # answers fast could otherwise fail every commit.
                try:
                    peer.verify_vote(vote, ms, digest)
                except BecoError as exc:
                    return f"{member.name}: {exc.message}"
                return vote
            except grpc.aio.AioRpcError as exc:
                return f"{member.name}: {exc.code().name} {exc.details()}"

        tasks = [asyncio.ensure_future(ask(m)) for m in voters]
        count = tally.Tally(quorum=ms.quorum, voters=len(voters))
        valid: list[ppb.Vote] = []
        invalid: list[ppb.Vote] = []
        problems: list[str] = []
        try:
            for fut in asyncio.as_completed(tasks, timeout=timeout + 0.5):
                try:
                    res = await fut
                except TimeoutError:
                    break
                if isinstance(res, str):
                    problems.append(res)
                    count = count.add_unreachable()
                    metrics.VOTES.labels("unreachable").inc()
                elif res.verdict == ppb.VERDICT_VALID:
                    valid.append(res)
                    count = count.add_valid()
                    metrics.VOTES.labels("valid").inc()
                else:
                    invalid.append(res)
                    count = count.add_invalid(res.code)
                    metrics.VOTES.labels("invalid").inc()
                if count.decided:
                    break
        except TimeoutError:
            pass
        metrics.QUORUM_WAIT.observe(time.perf_counter() - t0)
        # Votes still on their way are not needed; let them finish in the background.
        for t in tasks:
            if not t.done():
                rt.spawn(t)
        if not count.reached:
            reasons = [f"{_name(ms, v.voter)}: {v.reason}" for v in invalid] + problems
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
        qc = ppb.QuorumCertificate(header=header, votes=valid)
        try:
            outcome = await self._commit(peer.seal("commit", qc, rt.key, rt.peer_id, rt.now_ms()))
        except grpc.aio.AioRpcError as exc:
            log.warning("SST commit failed: %s %s", exc.code().name, exc.details())
            err = relayed(exc, "the SST")
            if err.code in tally.INDETERMINATE_CODES:
                out = await self._fail(prop, "ABORTED", f"{err.message} (not committed)")
            else:
                out = await self._fail(prop, err.code, err.message)
            out.valid_votes = count.valid
            return out
        except BaseException:
            self.sequences.pop(prop.user_id)  # cancelled mid-commit: re-read
            raise
        if outcome.status == ppb.OUTCOME_COMMITTED:
            self._committed(prop, outcome)
        else:  # recorded failed at the SST already
            self.sequences.pop(prop.user_id)
            metrics.PROPOSALS.labels("failed").inc()
        outcome.valid_votes = count.valid
        outcome.invalid_votes = count.invalid
        return outcome

    async def _commit(self, env: ppb.PeerEnvelope) -> ppb.Outcome:
        """Send the certificate to the SST; UNAVAILABLE (e.g. PostgreSQL restarting) is
        retried a few times: committing a proposal id is idempotent."""
        for attempt in range(len(COMMIT_RETRY_PAUSES_S) + 1):
            try:
                outcome: ppb.Outcome = await self._sst().Commit(
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


def _name(ms: Any, pid: str) -> str:
    m = ms.by_peer_id(pid)
    return str(m.name) if m is not None else pid
