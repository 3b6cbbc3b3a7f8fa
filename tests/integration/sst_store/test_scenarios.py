"""The commit path under faults, deterministic: the validator, the SST (real store on
PostgreSQL) and three user nodes in one event loop over the in-process transport
(``beco_node.testkit``), one manual clock, faults injected per call."""

from __future__ import annotations

import asyncio
import hashlib
import types
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import auth, keys, membership, model, peer, settings
from beco_node.client import Client, proposal_id
from beco_node.clock import ManualClock, now_ms
from beco_node.services import validator as validator_mod
from beco_node.services.runtime import Runtime
from beco_node.services.sst import SstService
from beco_node.services.user import IdentityService, UserNode, VoterService
from beco_node.services.validator import ValidatorService
from beco_node.sst.store import SstStore
from beco_node.testkit import Fault, InProcessNetwork

pytestmark = pytest.mark.postgres

USERS = ("user-a", "user-b", "user-c")
ADDR = {
    "rendezvous": "127.0.0.1:7100",
    "validator": "127.0.0.1:7101",
    "sst": "127.0.0.1:7102",
    "user-a": "127.0.0.1:7103",
    "user-b": "127.0.0.1:7104",
    "user-c": "127.0.0.1:7105",
}
ROLE = {
    "rendezvous": "rendezvous",
    "validator": "validator",
    "sst": "sst",
    **{u: "user" for u in USERS},
}


class Net:
    """Every role of a network, in process. Background catch-up is off: tests call it."""

    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp, self.dsn = tmp, dsn
        self.clock = ManualClock(now_ms())
        self.net = InProcessNetwork()
        self.keys = {n: keys.generate_private_key() for n in ADDR}
        members = [
            membership.make_member(n, ROLE[n], "a", a, keys.public_key_bytes(self.keys[n]))
            for n, a in ADDR.items()
        ]
        ms = membership.build("test", 1, 2, members)
        (tmp / "membership.json").write_text(ms.dumps())
        for n, k in self.keys.items():
            (tmp / f"{n}.key").write_bytes(keys.private_key_to_pem(k))
        self.nodes: dict[str, UserNode] = {}
        self.rts: list[Runtime] = []

    def runtime(self, name: str, *extra: str) -> Runtime:
        s = settings.parse(
            [
                *extra,
                "--role",
                ROLE[name],
                "--membership",
                str(self.tmp / "membership.json"),
                "--key-file",
                str(self.tmp / f"{name}.key"),
                "--insecure",
                "--vote-timeout-ms",
                "2000",
                "--database-url",
                self.dsn,
            ]
        )
        rt = Runtime(s, self.clock, transport=self.net.channel)
        self.rts.append(rt)
        return rt

    async def start(self) -> None:
        self.store = await SstStore.open(self.dsn, self.keys["sst"])
        self.sst = SstService(self.runtime("sst"), self.store)
        self.net.serve(ADDR["sst"], [(ppb_grpc.add_SstServicer_to_server, self.sst)])
        self.start_validator()
        for u in USERS:
            node = UserNode(self.runtime(u), background_sync=False)
            self.net.serve(
                ADDR[u],
                [
                    (pb_grpc.add_IdentityServicer_to_server, IdentityService(node)),
                    (ppb_grpc.add_UserNodeServicer_to_server, VoterService(node)),
                ],
            )
            await node.load_all()
            self.nodes[u] = node

    def start_validator(self) -> ValidatorService:
        """A (new) validator process: nothing of a previous one's memory survives."""
        self.net.stop(ADDR["validator"])
        self.validator = ValidatorService(self.runtime("validator"))
        self.net.serve(
            ADDR["validator"], [(ppb_grpc.add_ValidatorServicer_to_server, self.validator)]
        )
        return self.validator

    def client(self, key: Any, node: str = "user-a") -> Client:
        return Client(ADDR[node], key, channel=self.net.channel(ADDR[node]), retry_for=10)

    async def settle(self) -> None:
        """Let every task the runtimes own finish (notices, bookkeeping)."""
        for _ in range(200):
            pending = [t for rt in self.rts for t in rt._tasks if not t.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=0.05)
        raise AssertionError("background tasks never finished")

    async def close(self) -> None:
        for rt in self.rts:
            await rt.close()
        await self.store.close()


@pytest.fixture
async def net(tmp_path: Path, dsn: str) -> AsyncIterator[Net]:
    n = Net(tmp_path, dsn)
    await n.start()
    try:
        yield n
    finally:
        await n.close()


def signed(key: Any, method: str, req: Any) -> Any:
    auth.sign_request("/beco.v1.Identity/" + method, req, key, now_ms())
    return req


async def expect(code: grpc.StatusCode, coro: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await coro
    assert ei.value.code() == code, ei.value.details()
    return ei.value.details() or ""


async def test_lost_answers_resolve_to_the_one_commit(net: Net) -> None:
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")
        # the validator's answer to the origin is lost after the commit: the origin looks
        # the outcome up at the SST and answers it
        net.net.faults.append(Fault(address=ADDR["validator"], method="Propose", drop="reply"))
        r = await a.set_first(a.user_id, "Al")
        assert r.commit.sequence == 2 and list(r.user.first_name.values) == ["Al"]
        net.net.faults.clear()
        # the node's answer to the client is lost: the client re-sends the same signed
        # request and gets the same commit back, applied once
        net.net.faults.append(
            Fault(address=ADDR["user-a"], method="UpdateFirstName", drop="reply", times=1)
        )
        r = await a.set_first(a.user_id, "Ally")
        assert a.resends == 1
        assert r.commit.sequence == 3 and r.commit.duplicate
        hist = await a.history(a.user_id)
        assert [e.sequence for e in hist.entries] == [1, 2, 3]
        assert net.store.tree_head().tree_size == 3
        # re-sent to another node: same answer; and its outcome by id
        req = signed(
            alice, "UpdateLastName", pb.UpdateLastNameRequest(user_id=a.user_id, last_name="L")
        )
        first = await a.stub.UpdateLastName(req)
        async with net.client(alice, "user-c") as c:
            again = await c.stub.UpdateLastName(req)
            assert again.commit.leaf_index == first.commit.leaf_index
            out = await c.get_outcome(proposal_id(req))
            assert out.status == pb.PROPOSAL_STATUS_COMMITTED
            assert out.commit.sequence == first.commit.sequence
            unknown = await c.get_outcome("ab" * 32)
            assert unknown.status == pb.PROPOSAL_STATUS_UNKNOWN
        assert net.store.tree_head().tree_size == 4


async def test_commit_bookkeeping_survives_the_callers_deadline(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL committed, then the validator's CommitBatch call timed out (its handler is
    cancelled): the client still gets the commit, and cache and notices follow."""
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")
        await net.settle()
        gate = asyncio.Event()
        real_commit = net.store.commit

        async def slow_after_commit(entry: Any) -> Any:
            res = await real_commit(entry)
            await gate.wait()  # committed in PostgreSQL; the rest waits
            return res

        monkeypatch.setattr(net.store, "commit", slow_after_commit)
        monkeypatch.setattr(validator_mod, "COMMIT_TIMEOUT_S", 0.3)
        r = await a.set_first(a.user_id, "Late")
        assert r.commit.sequence == 2 and list(r.user.first_name.values) == ["Late"]
        assert a.resends == 0
        gate.set()
        await net.settle()
        assert (net.sst.cache.get(a.user_id) or (0, b""))[0] == 2
        for u in USERS:  # notified (b, c) or answered (a): no catch-up needed
            assert net.nodes[u].store.sequence(a.user_id) == 2, u
        monkeypatch.setattr(net.store, "commit", real_commit)
        assert (await a.set_last(a.user_id, "Next")).commit.sequence == 3


async def test_a_failed_request_never_commits_after_a_validator_restart(net: Net) -> None:
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")
        for u in ("user-b", "user-c"):
            net.net.faults.append(Fault(address=ADDR[u], method="VoteBatch", drop="request"))
        req = signed(
            alice, "UpdateFirstName", pb.UpdateFirstNameRequest(user_id=a.user_id, first_name="X")
        )
        details = await expect(grpc.StatusCode.ABORTED, a.stub.UpdateFirstName(req))
        assert "quorum not reached" in details
        net.net.faults.clear()
        net.start_validator()  # its memory is gone; the SST's record is not
        async with net.client(alice, "user-b") as b:
            again = await expect(grpc.StatusCode.ABORTED, b.stub.UpdateFirstName(req))
            assert "quorum not reached" in again
            out = await b.get_outcome(proposal_id(req))
            assert out.status == pb.PROPOSAL_STATUS_FAILED and out.code == "ABORTED"
        assert net.store.tree_head().tree_size == 1
        assert [e.sequence for e in (await a.history(a.user_id)).entries] == [1]
        # a new request commits normally
        assert (await a.set_first(a.user_id, "Y")).commit.sequence == 2


async def test_missed_notices_are_bounded_by_the_catch_up(net: Net) -> None:
    alice, bob = keys.generate_private_key(), keys.generate_private_key()
    bob_id = keys.peer_id(keys.public_key_bytes(bob))
    c_node = net.nodes["user-c"]
    async with net.client(alice) as a, net.client(bob, "user-c") as b:
        await b.create_user("Bob")
        await a.create_user("Alice")
        await net.settle()
        assert c_node.store.sequence(a.user_id) == 1
        # user-c misses every notice from now on (and does not vote)
        net.net.faults.append(Fault(address=ADDR["user-c"], method="ApplyBatch", drop="request"))
        net.net.faults.append(Fault(address=ADDR["user-c"], method="VoteBatch", drop="request"))
        await a.grant(a.user_id, "first", bob_id, "editor")
        await net.settle()
        assert c_node.store.sequence(a.user_id) == 1  # behind
        # a stale copy refuses nothing before refreshing: Bob's edit through user-c works
        r = await b.set_first(a.user_id, "By Bob")
        assert r.commit.sequence == 3
        await a.set_last(a.user_id, "Later")
        await net.settle()
        assert c_node.store.sequence(a.user_id) == 3
        # within the bound a read may be that stale; past it the node refreshes first
        net.clock.advance(c_node.staleness_bound_s + 1)
        assert (await b.get_user(a.user_id)).sequence == 4
        # the catch-up by log position brings everything, and the lag gauge to 0
        await c_node.catch_up()
        assert c_node.synced_size == net.store.tree_head().tree_size == 5
        assert c_node.fresh()


async def test_a_restarted_node_loads_then_catches_up(net: Net) -> None:
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")
        fresh = UserNode(net.runtime("user-c"), background_sync=False)
        await fresh.load_all()
        assert fresh.synced_size == 1 and fresh.store.sequence(a.user_id) == 1
        await a.set_first(a.user_id, "Two")
        # the new process was not served: it got no notice; the catch-up brings it
        await fresh.catch_up()
        assert fresh.store.sequence(a.user_id) == 2


async def test_the_staleness_bound_is_the_nodes_setting(net: Net) -> None:
    node = UserNode(net.runtime("user-c", "--staleness-bound-ms", "2000"), background_sync=False)
    await node.load_all()
    assert node.staleness_bound_s == 2.0 and node.fresh()
    net.clock.advance(1.5)
    assert node.fresh()
    net.clock.advance(1.0)  # 2.5 s since the catch-up was asked for: past the bound
    assert not node.fresh()
    await node.catch_up()
    assert node.fresh()


async def test_a_resend_joins_the_attempt_in_flight(net: Net) -> None:
    alice = keys.generate_private_key()
    async with net.client(alice) as a, net.client(alice, "user-b") as b:
        await a.create_user("Alice")
        hold = asyncio.Event()
        net.net.faults.append(Fault(address=ADDR["sst"], method="CommitBatch", hold=hold))
        req = signed(
            alice, "UpdateLastName", pb.UpdateLastNameRequest(user_id=a.user_id, last_name="J")
        )
        first = asyncio.create_task(a.stub.UpdateLastName(req))
        for _ in range(100):  # until the validator holds it at the SST
            if any(m.endswith("/CommitBatch") for _, m in net.net.calls[-3:]):
                break
            await asyncio.sleep(0.01)
        second = asyncio.create_task(b.stub.UpdateLastName(req))
        await asyncio.sleep(0.1)
        hold.set()
        r1, r2 = await asyncio.gather(first, second)
        assert r1.commit.leaf_index == r2.commit.leaf_index
        commits = [m for _, m in net.net.calls if m.endswith("/CommitBatch")]
        assert len(commits) == 2  # the creation, and this request once
        assert net.store.tree_head().tree_size == 2


async def test_list_users_past_the_bound_catches_up_first(net: Net) -> None:
    alice, bob = keys.generate_private_key(), keys.generate_private_key()
    bob_id = keys.peer_id(keys.public_key_bytes(bob))
    async with net.client(alice) as a, net.client(bob, "user-c") as b:
        await b.create_user("Bob")
        await a.create_user("Alice")
        await net.settle()
        net.net.faults.append(Fault(address=ADDR["user-c"], method="ApplyBatch", drop="request"))
        net.net.faults.append(Fault(address=ADDR["user-c"], method="VoteBatch", drop="request"))
        await a.grant(a.user_id, "last", bob_id, "viewer")
        await net.settle()
        assert [u.user_id for u in (await b.list_users()).users] == [bob_id]  # within the bound
        net.clock.advance(net.nodes["user-c"].staleness_bound_s + 1)
        listed = {u.user_id for u in (await b.list_users()).users}
        assert listed == {bob_id, a.user_id}
        # and with the SST gone, a node past the bound answers UNAVAILABLE, never stale data
        net.clock.advance(net.nodes["user-c"].staleness_bound_s + 1)
        net.net.faults.append(Fault(address=ADDR["sst"], drop="request"))
        details = await expect(grpc.StatusCode.UNAVAILABLE, b.get_user(a.user_id))
        assert "behind" in details


async def test_the_validator_retries_a_commit_the_sst_could_not_take(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validator_mod, "COMMIT_RETRY_PAUSES_S", (0.01, 0.01, 0.01))
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")
        # the certificate is lost twice on the way, then the answer once: still one commit
        net.net.faults.append(
            Fault(address=ADDR["sst"], method="CommitBatch", drop="request", times=2)
        )
        net.net.faults.append(
            Fault(address=ADDR["sst"], method="CommitBatch", drop="reply", times=1)
        )
        r = await a.set_first(a.user_id, "Once")
        assert r.commit.sequence == 2 and a.resends == 0
        assert net.store.tree_head().tree_size == 2


# ---- batches: the validator collects the proposals that arrive while a round is in flight


def held_round(net: Net, method: str, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """One round at a time, and the next call(s) of ``method`` held: what arrives meanwhile
    makes up the next batch."""
    monkeypatch.setattr(net.validator.batcher, "max_rounds", 1)
    hold = asyncio.Event()
    times = len(USERS) if method == "VoteBatch" else 1
    net.net.faults.append(Fault(method=method, hold=hold, times=times))
    return hold


async def until(cond: Any, what: str) -> None:
    for _ in range(3000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def proposal(net: Net, origin: str, method: str, req: Any, uid: str) -> ppb.Proposal:
    return ppb.Proposal(
        proposal_id=proposal_id(req),
        user_id=uid,
        kind=model.MUTATIONS[method].kind,
        method=method,
        request=req.SerializeToString(),
        origin=keys.peer_id(keys.public_key_bytes(net.keys[origin])),
    )


def propose_directly(net: Net, origin: str, method: str, req: Any, uid: str) -> Any:
    """What a faulty (or lagging) origin could send: a proposal it did not check."""
    prop = proposal(net, origin, method, req, uid)
    env = peer.seal("propose", prop, net.keys[origin], prop.origin, net.clock.now_ms())
    return ppb_grpc.ValidatorStub(net.net.channel(ADDR["validator"])).Propose(env, timeout=30)


async def test_a_batch_with_one_invalid_change_commits_the_others(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round whose batch holds a change every voter refuses: the others commit."""
    people = [keys.generate_private_key() for _ in range(3)]
    async with (
        net.client(people[0]) as a,
        net.client(people[1], "user-b") as b,
        net.client(people[2], "user-c") as c,
    ):
        for cl, name in ((a, "Ann"), (b, "Bob"), (c, "Cid")):
            await cl.create_user(name)
        start = len(net.net.calls)
        hold = held_round(net, "VoteBatch", monkeypatch)
        first = asyncio.ensure_future(c.set_first(c.user_id, "Held"))
        await until(lambda: net.validator.rounds == 1, "the first round")
        ok = asyncio.ensure_future(b.set_last(b.user_id, "B"))
        bad = signed(
            people[1],
            "UpdateFirstName",
            pb.UpdateFirstNameRequest(user_id=a.user_id, first_name="X"),
        )
        refused = asyncio.ensure_future(
            propose_directly(net, "user-b", model.UPDATE_FIRST, bad, a.user_id)
        )
        await until(lambda: len(net.validator.pending) == 2, "two proposals queued")
        hold.set()
        await first
        assert (await ok).commit.sequence == 2
        out = await refused
        assert out.status == ppb.OUTCOME_FAILED and out.code == "PERMISSION_DENIED", out
        assert "quorum not reached (0 valid" in out.reason
        votes = [m for _, m in net.net.calls[start:] if m.endswith("/VoteBatch")]
        assert len(votes) == 2 * len(USERS)  # the held round, then one batch of two
        assert net.store.tree_head().tree_size == 5
        assert (await net.sst._known(proposal_id(bad))).code == "PERMISSION_DENIED"


async def test_a_vote_signed_over_another_batch_is_not_counted(net: Net) -> None:
    server = net.net.servers[ADDR["user-c"]]
    name = "/beco.v1.UserNode/VoteBatch"
    honest = server.handlers[name]

    async def other_batch(req: Any, ctx: Any) -> Any:
        vote = await honest.unary_unary(req, ctx)
        root = hashlib.sha256(b"some other batch").digest()
        return peer.sign_batch_vote(root, [], net.keys["user-c"], vote.voter)

    server.handlers[name] = types.SimpleNamespace(
        request_deserializer=honest.request_deserializer,
        response_serializer=honest.response_serializer,
        unary_unary=other_batch,
    )
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Alice")  # quorum from user-a and user-b
        net.net.faults.append(Fault(address=ADDR["user-b"], method="VoteBatch", drop="request"))
        details = await expect(grpc.StatusCode.ABORTED, a.set_first(a.user_id, "X"))
        assert "user-c: vote from user-c is for another batch" in details, details
        net.net.faults.clear()
        assert (await a.set_first(a.user_id, "Y")).commit.sequence == 2


async def test_a_batch_cut_by_a_validator_crash_resolves_exactly_once(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SST committed a batch, its answer was lost, and the validator crashed before
    trying again: every client learns its commit (from the SST), none is applied twice."""
    people = [keys.generate_private_key() for _ in range(3)]
    monkeypatch.setattr(validator_mod, "COMMIT_RETRY_PAUSES_S", (60.0, 60.0, 60.0))
    async with (
        net.client(people[0]) as a,
        net.client(people[1], "user-b") as b,
        net.client(people[2], "user-c") as c,
    ):
        for cl, name in ((a, "Ann"), (b, "Bob"), (c, "Cid")):
            await cl.create_user(name)
        hold = held_round(net, "CommitBatch", monkeypatch)
        first = asyncio.ensure_future(c.set_first(c.user_id, "Held"))
        await until(lambda: net.validator.rounds == 1 and not net.validator.pending, "round 1")
        writes = [
            asyncio.ensure_future(a.set_first(a.user_id, "Ann2")),
            asyncio.ensure_future(b.set_first(b.user_id, "Bob2")),
        ]
        await until(lambda: len(net.validator.pending) == 2, "a batch of two queued")
        net.net.faults.append(Fault(method="CommitBatch", drop="reply", times=1))
        hold.set()
        assert (await first).commit.sequence == 2
        await until(lambda: net.store.tree_head().tree_size == 6, "the batch committed")
        for t in list(net.validator.rt._tasks):  # the validator crashes
            t.cancel()
        net.start_validator()
        for w in writes:
            assert (await w).commit.sequence == 2
        # answered from the SST's durable outcome, not by the crashed validator
        assert sum(m.endswith("/GetOutcome") for _, m in net.net.calls) == 2
        assert net.store.tree_head().tree_size == 6
        for cl, uid in ((a, a.user_id), (b, b.user_id)):
            assert [e.sequence for e in (await cl.history(uid)).entries] == [1, 2]
            assert (await cl.set_last(uid, "Next")).commit.sequence == 3


async def test_failure_records_are_pruned_past_the_admission_horizon(net: Net) -> None:
    """The SST forgets a failure record once its request (by its signed time) is past the
    admission horizon of ``--skew-ms``; before that, and for a request signed ahead, the
    record keeps it from ever committing."""
    alice, bob = keys.generate_private_key(), keys.generate_private_key()

    def at(key: Any, method: str, req: Any, ms: int) -> Any:
        auth.sign_request("/beco.v1.Identity/" + method, req, key, ms)
        return req

    async def outcome(pid: str) -> int:
        req = at(bob, "GetOutcome", pb.GetOutcomeRequest(proposal_id=pid), net.clock.now_ms())
        r = await b.stub.GetOutcome(req)
        return int(r.status)

    async with net.client(alice) as a, net.client(bob, "user-b") as b:
        await a.create_user("Alice")
        t0 = net.clock.now_ms()
        refused = at(
            bob, "UpdateFirstName", pb.UpdateFirstNameRequest(user_id=a.user_id, first_name="M"), t0
        )
        await expect(grpc.StatusCode.PERMISSION_DENIED, b.stub.UpdateFirstName(refused))
        ahead_s = 600  # signed 10 minutes ahead: refused now, admissible then
        early = at(
            alice,
            "UpdateLastName",
            pb.UpdateLastNameRequest(user_id=a.user_id, last_name="Late"),
            t0 + ahead_s * 1000,
        )
        await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateLastName(early))
        horizon_s = auth.admission_horizon_ms(net.sst.rt.settings.skew_ms) / 1000
        net.clock.advance(horizon_s - 1)
        assert await net.sst.prune_failures() == 0
        assert await outcome(proposal_id(refused)) == pb.PROPOSAL_STATUS_FAILED
        net.clock.advance(2)
        assert await net.sst.prune_failures() == 1
        assert await outcome(proposal_id(refused)) == pb.PROPOSAL_STATUS_UNKNOWN
        assert await outcome(proposal_id(early)) == pb.PROPOSAL_STATUS_FAILED
        # the pruned request is past the horizon: no node proposes it any more
        await expect(grpc.StatusCode.UNAUTHENTICATED, b.stub.UpdateFirstName(refused))
        # the early one, once its time has come, is still refused by its record
        net.clock.advance(ahead_s - horizon_s)
        assert await net.sst.prune_failures() == 0
        await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateLastName(early))
        assert await outcome(proposal_id(early)) == pb.PROPOSAL_STATUS_FAILED
        assert net.store.tree_head().tree_size == 1


# ---- origin batches: a user node forwards what arrives while its forwards are in flight


def calls_of(net: Net, method: str, start: int = 0) -> int:
    return sum(m.endswith("/" + method) for _, m in net.net.calls[start:])


async def test_an_idle_origin_forwards_a_proposal_at_once_and_alone(net: Net) -> None:
    alice = keys.generate_private_key()
    async with net.client(alice) as a:
        await a.create_user("Ann")
    fw = net.nodes["user-a"].forwarder
    req = signed(
        alice, "UpdateFirstName", pb.UpdateFirstNameRequest(user_id=a.user_id, first_name="B")
    )
    start = len(net.net.calls)
    out = asyncio.ensure_future(
        fw.propose(proposal(net, "user-a", model.UPDATE_FIRST, req, a.user_id))
    )
    # No timer, no wait for company: within a few turns of the loop the call is made.
    for _ in range(3):
        await asyncio.sleep(0)
    assert fw.batcher.rounds == 1 and not fw.batcher.pending
    assert calls_of(net, "ProposeBatch", start) == 1
    assert (await out).status == ppb.OUTCOME_COMMITTED
    assert calls_of(net, "ProposeBatch", start) == 1 and calls_of(net, "Propose", start) == 0


def held_forwards(net: Net, origin: str, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """One forward at a time from ``origin``, and its next forward held: what arrives
    meanwhile makes up the next origin batch."""
    monkeypatch.setattr(net.nodes[origin].forwarder.batcher, "max_rounds", 1)
    hold = asyncio.Event()
    net.net.faults.append(
        Fault(address=ADDR["validator"], method="ProposeBatch", hold=hold, times=1)
    )
    return hold


async def test_an_origin_batch_with_one_invalid_proposal_commits_the_others(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = [keys.generate_private_key() for _ in range(3)]
    async with net.client(people[0]) as a, net.client(people[1]) as b, net.client(people[2]) as c:
        for cl, name in ((a, "Ann"), (b, "Bob"), (c, "Cid")):
            await cl.create_user(name)
        fw = net.nodes["user-a"].forwarder
        hold = held_forwards(net, "user-a", monkeypatch)
        start = len(net.net.calls)
        first = asyncio.ensure_future(a.set_first(a.user_id, "Held"))
        await until(lambda: fw.batcher.rounds == 1 and not fw.batcher.pending, "forward 1")
        ok_b = asyncio.ensure_future(b.set_first(b.user_id, "B"))
        ok_c = asyncio.ensure_future(c.set_last(c.user_id, "C"))
        # Bob may not edit Ann's name: every voter refuses it (the origin's own check is
        # bypassed, as a lagging origin's copy could let it through).
        bad_req = signed(
            people[1],
            "UpdateFirstName",
            pb.UpdateFirstNameRequest(user_id=a.user_id, first_name="X"),
        )
        bad = asyncio.ensure_future(
            fw.propose(proposal(net, "user-a", model.UPDATE_FIRST, bad_req, a.user_id))
        )
        await until(lambda: len(fw.batcher.pending) == 3, "three proposals collected")
        hold.set()
        assert (await first).commit.sequence == 2
        assert (await ok_b).commit.sequence == 2
        assert (await ok_c).commit.sequence == 2
        out = await bad
        assert out.status == ppb.OUTCOME_FAILED and out.code == "PERMISSION_DENIED", out
        assert calls_of(net, "ProposeBatch", start) == 2  # the held one, then one of three
        assert net.store.tree_head().tree_size == 6
        assert (await net.sst._known(proposal_id(bad_req))).code == "PERMISSION_DENIED"
        # the same signed request again: its one recorded outcome, nothing new
        again = await fw.propose(proposal(net, "user-a", model.UPDATE_FIRST, bad_req, a.user_id))
        assert again.status == ppb.OUTCOME_FAILED and again.code == "PERMISSION_DENIED"
        assert net.store.tree_head().tree_size == 6


async def test_an_origin_batch_cut_by_a_validator_crash_resolves_exactly_once(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An origin's batch of two reached the validator, the SST committed it, its answer
    was lost and the validator crashed: each client learns its commit once (from the
    SST), none is applied twice."""
    people = [keys.generate_private_key() for _ in range(3)]
    monkeypatch.setattr(validator_mod, "COMMIT_RETRY_PAUSES_S", (60.0, 60.0, 60.0))
    async with net.client(people[0]) as a, net.client(people[1]) as b, net.client(people[2]) as c:
        for cl, name in ((a, "Ann"), (b, "Bob"), (c, "Cid")):
            await cl.create_user(name)
        fw = net.nodes["user-a"].forwarder
        hold = held_forwards(net, "user-a", monkeypatch)
        start = len(net.net.calls)
        first = asyncio.ensure_future(c.set_first(c.user_id, "Held"))
        await until(lambda: fw.batcher.rounds == 1 and not fw.batcher.pending, "forward 1")
        writes = [
            asyncio.ensure_future(a.set_first(a.user_id, "Ann2")),
            asyncio.ensure_future(b.set_first(b.user_id, "Bob2")),
        ]
        await until(lambda: len(fw.batcher.pending) == 2, "an origin batch of two")
        hold.set()
        assert (await first).commit.sequence == 2
        await until(lambda: calls_of(net, "ProposeBatch", start) == 2, "the batch forwarded")
        net.net.faults.append(Fault(method="CommitBatch", drop="reply", times=1))
        await until(lambda: net.store.tree_head().tree_size == 6, "the batch committed")
        for t in list(net.validator.rt._tasks):  # the validator crashes
            t.cancel()
        net.start_validator()
        for w in writes:
            assert (await w).commit.sequence == 2
        # answered from the SST's durable outcome, not by the crashed validator
        assert calls_of(net, "GetOutcome", start) == 2
        assert calls_of(net, "ProposeBatch", start) == 2
        assert net.store.tree_head().tree_size == 6
        for cl, uid in ((a, a.user_id), (b, b.user_id)):
            assert [e.sequence for e in (await cl.history(uid)).entries] == [1, 2]
            assert (await cl.set_last(uid, "Next")).commit.sequence == 3


async def test_an_origin_proposes_one_by_one_to_a_validator_without_batches(net: Net) -> None:
    """A validator of the previous version (a rolling upgrade) has no ProposeBatch."""
    del net.net.servers[ADDR["validator"]].handlers["/beco.v1.Validator/ProposeBatch"]
    start = len(net.net.calls)
    async with net.client(keys.generate_private_key()) as a:
        await a.create_user("Ann")
        assert (await a.set_first(a.user_id, "B")).commit.sequence == 2
    assert calls_of(net, "Propose", start) == 2


async def test_a_refusal_asks_the_sst_once(net: Net) -> None:
    """A refusal is decided on the SST's state. From memory: one fetch to confirm it; when
    the node is past its staleness bound it already fetched the state to check: no second."""
    alice, bob = keys.generate_private_key(), keys.generate_private_key()
    async with net.client(alice) as a, net.client(bob) as b:
        await a.create_user("Alice")
        await b.create_user("Bob")
        for stale in (False, True):
            if stale:
                net.clock.advance(net.nodes["user-a"].staleness_bound_s + 1)
            start = len(net.net.calls)
            await expect(grpc.StatusCode.PERMISSION_DENIED, b.set_first(a.user_id, "Mallory"))
            assert calls_of(net, "GetUserState", start) == 1, stale
            assert calls_of(net, "RecordFailure", start) == 1
