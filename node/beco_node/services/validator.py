"""The validator (guardian): sequences proposals per user and gathers a quorum.

- One proposal in flight per user; the others wait in FIFO order
  (``asyncio.Lock`` wakes waiters in arrival order). Different users proceed
  in parallel.
- The proposal id is SHA-256 of the client's request signature, so a signed
  request can be proposed once per replay window network-wide, whichever user
  node received it: duplicates are REJECTED with UNAUTHENTICATED.
- The validator assigns ``sequence = current + 1`` and a timestamp, signs the
  header, and fans it out to every user node of the current membership in
  parallel over persistent channels. VALIDATED at ``quorum`` VALID votes;
  FAILED as soon as the quorum can no longer be reached (INVALID votes,
  unreachable nodes) or at ``--vote-timeout-ms``.
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

from beco_node import metrics, peer
from beco_node.auth import ReplayCache
from beco_node.errors import BecoError
from beco_node.lru import BoundedLru
from beco_node.quorum import can_still_reach
from beco_node.services.relay import relayed
from beco_node.services.runtime import Runtime, rpc_handler

log = logging.getLogger("beco.validator")
# Bounds (docs/architecture.md, "Memory bounds"); a miss costs one SST query.
MAX_NOTICES = 10_000
NOTICE_BYTES = 16 * 1024 * 1024
MAX_SEQUENCES = 100_000
MAX_PROPOSALS_SEEN = 200_000
Ctx = grpc.aio.ServicerContext[Any, Any]


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
        self.seen = ReplayCache(2 * rt.settings.skew_ms + 60_000, MAX_PROPOSALS_SEEN)

    @rpc_handler("validator.Propose")
    async def Propose(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.Outcome:
        peer.open_envelope(request, "propose", self.rt.membership, self.rt.now_ms())
        prop = peer.parse(ppb.Proposal, request.payload)
        assert isinstance(prop, ppb.Proposal)
        if not self.seen.check_and_add(prop.proposal_id.encode(), self.rt.now_ms()):
            metrics.PROPOSALS.labels("rejected").inc()
            return ppb.Outcome(
                status=ppb.OUTCOME_REJECTED,
                code="UNAUTHENTICATED",
                reason="replayed request: this signed request was already proposed",
            )
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

    async def _current_sequence(self, uid: str) -> int:
        seq = self.sequences.get(uid)
        if seq is None:
            sst = self.rt.membership.one("sst")
            stub = ppb_grpc.SstStub(self.rt.peer_channel(sst))
            env = peer.seal(
                "sst_query",
                ppb.SstQuery(user_id=uid),
                self.rt.key,
                self.rt.peer_id,
                self.rt.now_ms(),
            )
            reply = await stub.GetUserState(env, timeout=5, wait_for_ready=True)
            seq = reply.sequence if reply.found else 0
            self.sequences.put(uid, seq)
        return seq

    async def _run(self, prop: ppb.Proposal) -> ppb.Outcome:
        rt = self.rt
        ms = rt.membership
        try:
            current = await self._current_sequence(prop.user_id)
        except grpc.aio.AioRpcError as exc:
            metrics.PROPOSALS.labels("failed").inc()
            log.warning("SST unreachable: %s %s", exc.code().name, exc.details())
            err = relayed(exc, "the SST")
            return ppb.Outcome(status=ppb.OUTCOME_FAILED, code=err.code, reason=err.message)
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
        quorum = ms.quorum
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
        valid: list[ppb.Vote] = []
        invalid: list[ppb.Vote] = []
        problems: list[str] = []
        pending = len(tasks)
        try:
            for fut in asyncio.as_completed(tasks, timeout=timeout + 0.5):
                try:
                    res = await fut
                except TimeoutError:
                    break
                pending -= 1
                if isinstance(res, str):
                    problems.append(res)
                    metrics.VOTES.labels("unreachable").inc()
                elif res.verdict == ppb.VERDICT_VALID:
                    valid.append(res)
                    metrics.VOTES.labels("valid").inc()
                else:
                    invalid.append(res)
                    metrics.VOTES.labels("invalid").inc()
                if len(valid) >= quorum or not can_still_reach(quorum, len(valid), pending):
                    break
        except TimeoutError:
            pass
        metrics.QUORUM_WAIT.observe(time.perf_counter() - t0)
        # Votes still on their way are not needed; let them finish in the background.
        for t in tasks:
            if not t.done():
                rt.spawn(t)
        if len(valid) < quorum:
            # Voters may know a newer sequence than the cached one: re-read it next time.
            self.sequences.pop(prop.user_id)
            metrics.PROPOSALS.labels("failed").inc()
            code = "UNAVAILABLE"
            if invalid:
                codes = collections.Counter(v.code or "FAILED_PRECONDITION" for v in invalid)
                code = codes.most_common(1)[0][0]
            reasons = [f"{_name(ms, v.voter)}: {v.reason}" for v in invalid] + problems
            if pending:
                reasons.append(f"{pending} vote(s) missing at the deadline")
            log.info(
                "proposal failed",
                extra={
                    "fields": {"proposal": prop.proposal_id, "valid": len(valid), "quorum": quorum}
                },
            )
            return ppb.Outcome(
                status=ppb.OUTCOME_FAILED,
                code=code,
                reason=f"quorum not reached ({len(valid)} valid of {quorum} needed): "
                + "; ".join(reasons),
                valid_votes=len(valid),
                invalid_votes=len(invalid),
            )
        qc = ppb.QuorumCertificate(header=header, votes=valid)
        sst = ms.one("sst")
        stub = ppb_grpc.SstStub(rt.peer_channel(sst))
        try:
            outcome: ppb.Outcome = await stub.Commit(
                peer.seal("commit", qc, rt.key, rt.peer_id, rt.now_ms()),
                timeout=10,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            self.sequences.pop(prop.user_id)  # unknown whether it committed: re-read
            metrics.PROPOSALS.labels("failed").inc()
            log.warning("SST commit failed: %s %s", exc.code().name, exc.details())
            err = relayed(exc, "the SST")
            return ppb.Outcome(
                status=ppb.OUTCOME_FAILED,
                code=err.code,
                reason=err.message,
                valid_votes=len(valid),
            )
        except BaseException:
            self.sequences.pop(prop.user_id)  # cancelled mid-commit: re-read
            raise
        if outcome.status == ppb.OUTCOME_COMMITTED:
            self.sequences.put(prop.user_id, outcome.commit.sequence)
            self.notices.put(prop.user_id, outcome.applied)
            outcome.ClearField("applied")  # the origin does not need it
            metrics.PROPOSALS.labels("committed").inc()
        else:
            self.sequences.pop(prop.user_id)
            metrics.PROPOSALS.labels("failed").inc()
        outcome.valid_votes = len(valid)
        outcome.invalid_votes = len(invalid)
        return outcome


def _name(ms: Any, pid: str) -> str:
    m = ms.by_peer_id(pid)
    return str(m.name) if m is not None else pid
