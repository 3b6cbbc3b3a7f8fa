"""The network end to end: real processes, real gRPC, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, keys
from beco_node import client as client_mod
from beco_node.client import Client
from beco_node.clock import now_ms
from beco_node.local.network import LocalNetwork
from beco_node.membership import loads
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, verify_tree_head
from beco_node.merkle.verify import verify_consistency, verify_inclusion
from beco_node.origin import answered_by_node
from beco_node.session import ClientSession

from .conftest import Person, wait_for_sequence

pytestmark = pytest.mark.postgres
GET = "/beco.v1.Identity/GetUser"


def sst_key(net: LocalNetwork) -> bytes:
    return loads(net.membership_path.read_text()).one("sst").public_key


async def tree_size(net: LocalNetwork, who: Person) -> int:
    async with who.client(net) as c:
        return (await c.tree_head()).tree_size


async def expect(code: grpc.StatusCode, coro: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await coro  # type: ignore[misc]
    assert ei.value.code() == code, ei.value.details()
    return ei.value.details() or ""


async def test_happy_path_with_offline_proofs(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network, 0) as c:
        r = await c.create_user("Alice", ["Marie"], "Smith")
        assert r.commit.sequence == 1 and r.user.user_id == alice.id
        head1 = r.commit.tree_head
        r = await c.set_middle(alice.id, ["Anne", "Marie"])
        r = await c.set_first(alice.id, "Alicia")
        assert r.commit.sequence == 3
        u = await c.get_user(alice.id)
        assert list(u.first_name.values) == ["Alicia"]
        assert list(u.middle_names.values) == ["Anne", "Marie"]
        hist = await c.history(alice.id)
        assert [e.sequence for e in hist.entries] == [1, 2, 3]
        assert [e.kind for e in hist.entries] == [
            "create_user",
            "set_middle_names",
            "set_first_name",
        ]
        # inclusion of the last change, verified against the SST key from the membership
        e = hist.entries[-1]
        proof = await c.inclusion_proof(e.leaf_index)
        th = proof.tree_head
        verify_tree_head(
            sst_key(network),
            SignedTreeHead(th.tree_size, th.root_hash, th.timestamp_ms, th.signature),
        )
        verify_inclusion(
            leaf_hash(e.leaf_data), e.leaf_index, proof.tree_size, list(proof.hashes), th.root_hash
        )
        leaf = pb.LogLeaf()
        leaf.ParseFromString(e.leaf_data)
        assert leaf.user_id == alice.id and leaf.sequence == 3 and len(leaf.voters) >= 2
        assert b"Alicia" not in e.leaf_data  # the public log holds digests, not names
        cons = await c.consistency_proof(head1.tree_size)
        verify_consistency(
            head1.tree_size,
            cons.tree_head.tree_size,
            head1.root_hash,
            cons.tree_head.root_hash,
            list(cons.hashes),
        )
    # every user node applies the commit
    for node in (1, 2):
        await wait_for_sequence(network, node, alice, alice.id, 3)


async def test_non_editor_denied_until_granted(network: LocalNetwork) -> None:
    alice, bob = Person(), Person()
    async with alice.client(network) as a, bob.client(network, 1) as b:
        await a.create_user("Alice")
        await b.create_user("Bob")
        before = await tree_size(network, alice)
        await expect(grpc.StatusCode.PERMISSION_DENIED, b.set_first(alice.id, "Mallory"))
        seen = await b.get_user(alice.id)
        assert (
            not seen.first_name.readable and not seen.first_name.values
        )  # unrelated: existence only
        assert await tree_size(network, alice) == before
        await a.grant(alice.id, "first", bob.id, "viewer")
        await wait_for_sequence(network, 1, bob, alice.id, 2)
        assert list((await b.get_user(alice.id)).first_name.values) == ["Alice"]
        await expect(grpc.StatusCode.PERMISSION_DENIED, b.set_first(alice.id, "Mallory"))
        await a.grant(alice.id, "first", bob.id, "editor")
        await wait_for_sequence(network, 1, bob, alice.id, 3)
        r = await b.set_first(alice.id, "Ally")
        assert list(r.user.first_name.values) == ["Ally"]
        await expect(grpc.StatusCode.PERMISSION_DENIED, b.set_last(alice.id, "Nope"))
        listed = await b.list_users()
        assert {u.user_id for u in listed.users} == {alice.id, bob.id}
        await a.revoke(alice.id, "first", bob.id, "editor")
        await wait_for_sequence(network, 1, bob, alice.id, 5)
        await expect(grpc.StatusCode.PERMISSION_DENIED, b.set_first(alice.id, "Again"))


async def test_forged_stale_and_replayed_requests(network: LocalNetwork) -> None:
    alice = Person()
    eve = Person()
    async with alice.client(network) as a:
        await a.create_user("Alice")
        before = await tree_size(network, alice)
        m = "/beco.v1.Identity/UpdateFirstName"
        # forged: Eve signs a request but claims Alice's key
        req = pb.UpdateFirstNameRequest(user_id=alice.id, first_name="Eve")
        auth.sign_request(m, req, eve.key, now_ms())
        req.auth.public_key = keys.public_key_bytes(alice.key)
        await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateFirstName(req))
        # tampered after signing
        req = pb.UpdateFirstNameRequest(user_id=alice.id, first_name="Good")
        auth.sign_request(m, req, alice.key, now_ms())
        req.first_name = "Evil"
        await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateFirstName(req))
        # stale
        req = pb.UpdateFirstNameRequest(user_id=alice.id, first_name="Old")
        auth.sign_request(m, req, alice.key, now_ms() - 120_000)
        await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateFirstName(req))
        # unsigned
        await expect(
            grpc.StatusCode.UNAUTHENTICATED,
            a.stub.GetUser(pb.GetUserRequest(user_id=alice.id)),
        )
        # re-sent to the same node, and to another node: the same commit, applied once
        req = pb.UpdateFirstNameRequest(user_id=alice.id, first_name="Once")
        auth.sign_request(m, req, alice.key, now_ms())
        r = await a.stub.UpdateFirstName(req)
        assert r.commit.sequence == 2 and not r.commit.duplicate
        again = await a.stub.UpdateFirstName(req)
        assert again.commit.sequence == 2 and again.commit.duplicate
        assert again.commit.leaf_index == r.commit.leaf_index
        async with alice.client(network, 2) as other:
            elsewhere = await other.stub.UpdateFirstName(req)
            assert elsewhere.commit.leaf_index == r.commit.leaf_index
            # its outcome, by the id known before sending
            out = await other.get_outcome(client_mod.proposal_id(req))
            assert out.status == pb.PROPOSAL_STATUS_COMMITTED
            assert out.commit.leaf_index == r.commit.leaf_index
        # the same nonce with other content is a replay
        forged = pb.UpdateFirstNameRequest(user_id=alice.id, first_name="Twice")
        auth.sign_request(m, forged, alice.key, now_ms(), nonce=req.auth.nonce)
        details = await expect(grpc.StatusCode.UNAUTHENTICATED, a.stub.UpdateFirstName(forged))
        assert "replay" in details
        assert await tree_size(network, alice) == before + 1
        assert [e.sequence for e in (await a.history(alice.id)).entries] == [1, 2]


async def test_session_reads_authenticate_the_caller(network: LocalNetwork) -> None:
    """Reads through a session are the caller's: a viewer sees the value, an unrelated
    caller existence only; another's session id without its key, a replayed read and a
    session read of a write are refused."""
    alice, viewer, stranger = Person(), Person(), Person()
    async with (
        alice.client(network) as a,
        viewer.client(network) as v,
        stranger.client(network) as s,
    ):
        await a.create_user("Alice")
        await a.grant(alice.id, "first", viewer.id, "viewer")
        await wait_for_sequence(network, 0, alice, alice.id, 2)
        seen = await v.get_user(alice.id)
        assert list(seen.first_name.values) == ["Alice"] and not seen.first_name.editors
        assert not (await s.get_user(alice.id)).first_name.readable
        assert {u.user_id for u in (await v.list_users()).users} == {alice.id}
        assert v.sessions_opened == s.sessions_opened == 1  # one session, many reads
        assert v.session is not None and s.session is not None
        # the stranger with the viewer's session id but its own key: refused
        req = pb.GetUserRequest(user_id=alice.id)
        stolen = ClientSession(v.session.id, s.session.key, 60_000, 0)
        stolen.seal(GET, req)
        details = await expect(grpc.StatusCode.UNAUTHENTICATED, s.stub.GetUser(req))
        assert "bad session MAC" in details
        # a replayed session read: refused
        req = pb.GetUserRequest(user_id=alice.id)
        v.session.seal(GET, req)
        assert list((await v.stub.GetUser(req)).first_name.values) == ["Alice"]
        details = await expect(grpc.StatusCode.UNAUTHENTICATED, v.stub.GetUser(req))
        assert "replayed" in details
        # a MAC for one read is worth nothing for another method
        h = pb.GetHistoryRequest(user_id=alice.id)
        v.session.seal(GET, h)
        await expect(grpc.StatusCode.UNAUTHENTICATED, v.stub.GetHistory(h))
        # signed reads still work (older clients)
        async with Client(network.user_endpoints()[0], viewer.key, sessions=False) as old:
            assert list((await old.get_user(alice.id)).first_name.values) == ["Alice"]
            assert old.sessions_opened == 0


async def test_session_reads_survive_a_node_restart(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network, 2) as a:
        await a.create_user("Alice")
        await wait_for_sequence(network, 2, alice, alice.id, 1)
        assert (await a.get_user(alice.id)).sequence == 1
        assert a.sessions_opened == 1
        network.stop_node("user-c-0")
        network.start_node("user-c-0")
        await network.wait_healthy(["user-c-0"])
        # the node forgot the session: the client re-opens and reads, transparently
        assert list((await a.get_user(alice.id)).first_name.values) == ["Alice"]
        assert a.sessions_opened == 2


async def test_bad_input_is_refused_and_nothing_written(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network) as a:
        await a.create_user("Alice")
        before = await tree_size(network, alice)
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.set_first(alice.id, "x" * 257))
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.set_first(alice.id, "bell\x07"))
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.set_middle(alice.id, ["m"] * 17))
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.set_first("not-a-user", "A"))
        await expect(grpc.StatusCode.NOT_FOUND, a.set_first("0" * 32, "A"))
        await expect(grpc.StatusCode.NOT_FOUND, a.get_user("0" * 32))
        await expect(grpc.StatusCode.ALREADY_EXISTS, a.create_user("Again"))
        await expect(grpc.StatusCode.FAILED_PRECONDITION, a.set_first(alice.id, "A", expected=7))
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT, a.grant(alice.id, "first", alice.id, "viewer")
        )
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.list_users(page_size=5000))
        await expect(grpc.StatusCode.RESOURCE_EXHAUSTED, a.set_first(alice.id, "y" * 200_000))
        await expect(grpc.StatusCode.INVALID_ARGUMENT, a.inclusion_proof(10_000_000))
        assert await tree_size(network, alice) == before
        u = await a.get_user(alice.id)
        assert u.sequence == 1 and list(u.first_name.values) == ["Alice"]
        # the expected sequence, when right, is accepted
        assert (await a.set_first(alice.id, "Al", expected=1)).commit.sequence == 2


async def test_fifty_concurrent_updates_are_serialised(network: LocalNetwork) -> None:
    alice = Person()
    clients = [alice.client(network, i) for i in range(3)]
    try:
        await clients[0].create_user("Alice")
        await asyncio.gather(*(wait_for_sequence(network, i, alice, alice.id, 1) for i in range(3)))
        results = await asyncio.gather(
            *(clients[i % 3].set_first(alice.id, f"name-{i}") for i in range(50))
        )
        seqs = sorted(r.commit.sequence for r in results)
        assert seqs == list(range(2, 52))
        hist = await clients[0].history(alice.id)
        assert [e.sequence for e in hist.entries] == list(range(1, 52))
        by_seq = {r.commit.sequence: r for r in results}
        final = await clients[0].get_user(alice.id)
        assert final.sequence == 51
        assert list(final.first_name.values) == list(by_seq[51].user.first_name.values)
    finally:
        for c in clients:
            await c.close()


async def test_concurrent_writers_are_batched(network: LocalNetwork) -> None:
    """Real processes: proposals that arrive while rounds are in flight share a batch (one
    vote request per voter, one certificate, one transaction), and each commits once."""
    people = [Person() for _ in range(24)]
    clients = [p.client(network, i % 3) for i, p in enumerate(people)]
    port = network.nodes["validator"].metrics_port
    try:
        await asyncio.gather(*(c.create_user(f"P{i}") for i, c in enumerate(clients)))
        sum0 = await _metric(port, "beco_batch_size_sum") or 0.0
        count0 = await _metric(port, "beco_batch_size_count") or 0.0
        results = await asyncio.gather(*(c.set_first(c.user_id, "Batched") for c in clients))
        assert sorted(r.commit.sequence for r in results) == [2] * len(people)
        assert len({r.commit.leaf_index for r in results}) == len(people)
        proposals = (await _metric(port, "beco_batch_size_sum") or 0.0) - sum0
        rounds = (await _metric(port, "beco_batch_size_count") or 0.0) - count0
        assert proposals == len(people)
        assert rounds < proposals, f"{proposals} proposals in {rounds} rounds: never batched"
    finally:
        for c in clients:
            await c.close()


async def test_one_user_node_down_still_commits(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network) as a:
        await a.create_user("Alice")
        network.stop_node("user-c-0")
        try:
            r = await a.set_last(alice.id, "Down")
            assert r.commit.sequence == 2
        finally:
            network.start_node("user-c-0")
            await network.wait_healthy(["user-c-0"])
        # the restarted node loads the committed state
        await wait_for_sequence(network, 2, alice, alice.id, 2)
        async with alice.client(network, 2) as c:
            assert list((await c.get_user(alice.id)).last_name.values) == ["Down"]


async def test_below_quorum_fails_and_writes_nothing(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network) as a:
        await a.create_user("Alice")
        before = await tree_size(network, alice)
        network.stop_node("user-b-0")
        network.stop_node("user-c-0")
        try:
            # definitive (recorded at the SST): ABORTED, never UNAVAILABLE (= outcome unknown)
            details = await expect(grpc.StatusCode.ABORTED, a.set_last(alice.id, "Lost"))
            assert "quorum not reached" in details
            assert await tree_size(network, alice) == before
            u = await a.get_user(alice.id)
            assert u.sequence == 1 and not u.last_name.values
        finally:
            network.start_node("user-b-0")
            network.start_node("user-c-0")
            await network.wait_healthy(["user-b-0", "user-c-0"])
        assert [e.sequence for e in (await a.history(alice.id)).entries] == [1]
        # back above quorum: commits again
        for _ in range(50):
            try:
                assert (await a.set_last(alice.id, "Back")).commit.sequence == 2
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.ABORTED, exc.details()
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("never committed after the nodes came back")


async def test_unresponsive_voters_fail_at_the_deadline(network: LocalNetwork) -> None:
    """Two user nodes hang (SIGSTOP): no vote arrives, FAILED at the vote deadline (3 s here)."""
    alice = Person()
    async with alice.client(network) as a:
        await a.create_user("Alice")
        before = await tree_size(network, alice)
        hung = [network.nodes[n].proc for n in ("user-b-0", "user-c-0")]
        for p in hung:
            assert p is not None
            p.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            details = await expect(grpc.StatusCode.ABORTED, a.set_last(alice.id, "Hung"))
            waited = time.monotonic() - t0
            assert "missing at the deadline" in details or "DEADLINE_EXCEEDED" in details, details
            assert 2.5 < waited < 20
        finally:
            for p in hung:
                assert p is not None
                p.send_signal(signal.SIGCONT)
        assert await tree_size(network, alice) == before
        assert (await a.get_user(alice.id)).sequence == 1


async def test_sst_and_postgres_restart_keep_acknowledged_changes(network: LocalNetwork) -> None:
    people = [Person() for _ in range(3)]
    acked: dict[str, tuple[int, str]] = {}
    for i, p in enumerate(people):
        async with p.client(network, i) as c:
            await c.create_user(f"P{i}")
            r = await c.set_last(p.id, f"L{i}")
            acked[p.id] = (r.commit.sequence, f"L{i}")
    head_before = await tree_size(network, people[0])
    network.stop_node("sst")
    await network.stop_postgres()
    await network.start_postgres()
    network.start_node("sst")
    await network.wait_healthy(["sst"])
    assert await tree_size(network, people[0]) == head_before
    for p in people:
        async with p.client(network, 1) as c:
            hist = await c.history(p.id)
            assert [e.sequence for e in hist.entries] == [1, 2]
            # and the network keeps committing on top
            for _ in range(50):
                try:
                    r = await c.set_first(p.id, "After")
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    await asyncio.sleep(0.2)
            assert r.commit.sequence == acked[p.id][0] + 1
            assert list(r.user.last_name.values) == [acked[p.id][1]]


async def test_metrics_health_and_reflection(network: LocalNetwork) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    # Commit one change of our own, so the checks below don't rely on earlier tests.
    async with Person().client(network, 0) as c:
        await c.create_user("Metrics", [], "Probe")
    node = network.nodes["user-a-0"]
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5
        ).read()
    )
    text = body.decode()
    for name in (
        "beco_rpc_requests_total",
        "beco_rpc_latency_seconds",
        "beco_votes_total",
        "beco_users",
    ):
        assert name in text
    vnode = network.nodes["validator"]
    vbody = await asyncio.to_thread(
        lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{vnode.metrics_port}/metrics", timeout=5
        ).read()
    )
    assert 'beco_proposals_total{outcome="committed"}' in vbody.decode()
    ms = loads(network.membership_path.read_text())
    assert await _metric(vnode.metrics_port, "beco_membership_quorum") == ms.quorum
    assert await _metric(vnode.metrics_port, "beco_membership_user_nodes") == len(ms.user_nodes)
    async with grpc.aio.insecure_channel(node.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for resp in call:
            names = {s.name for s in resp.list_services_response.service}
            break
    assert {"beco.v1.Identity", "grpc.health.v1.Health"} <= names


async def test_peer_calls_travel_on_links(network: LocalNetwork) -> None:
    """The validator's votes and commits go on its peer links (services/link.py) once they
    are up; until then (a restarted peer) unary, so the first commits may not."""
    vport = network.nodes["validator"].metrics_port
    name = 'beco_peer_calls_total{route="link"}'
    before = await _metric(vport, name) or 0.0
    p = Person()
    async with p.client(network, 0) as c:
        await c.create_user("Linked")
        for i in range(50):
            await c.set_first(p.id, f"Linked{i}")
            if (await _metric(vport, name) or 0.0) >= before + 4:  # 3 votes + 1 commit
                break
    assert (await _metric(vport, name) or 0.0) >= before + 4
    assert (await _metric(vport, 'beco_peer_link_events_total{event="opened"}') or 0) >= 1


async def test_client_calls_on_one_stream(network: LocalNetwork) -> None:
    """A multiplexed client (Identity/Calls) writes, reads through a session and is refused
    exactly as a unary one; its calls are served on the stream once it is up."""
    port = network.nodes["user-a-0"].metrics_port
    name = 'beco_stream_calls_total{stream="calls"}'
    before = await _metric(port, name) or 0.0
    owner, other = Person(), Person()
    ep = network.user_endpoints()[0]
    async with (
        Client(ep, owner.key, multiplex=True) as c,
        Client(ep, other.key, multiplex=True) as o,
    ):
        await c.create_user("Streamed", [], "Calls")
        await o.create_user("Other")
        for i in range(20):
            await c.set_first(owner.id, f"Streamed{i}")
            if (await _metric(port, name) or 0.0) >= before + 2:
                break
        assert (await _metric(port, name) or 0.0) >= before + 2  # on the stream, not unary
        got = await c.get_user(owner.id)  # a session read, on the stream
        assert got.first_name.values == [f"Streamed{i}"]
        assert c.sessions_opened == 1
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await o.set_first(owner.id, "Mallory")
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert answered_by_node(ei.value)
    async with owner.client(network, 0) as plain:  # the same state, unary
        assert (await plain.get_user(owner.id)).first_name.values == [f"Streamed{i}"]


async def test_multiplexed_writes_survive_their_node_being_killed(network: LocalNetwork) -> None:
    """Writers sharing one Identity/Calls stream while their node is killed (SIGKILL) and
    restarted: the calls pending on the broken stream fail UNAVAILABLE, the client re-sends
    the same signed requests (unary, then on the reopened stream) and every write ends
    committed exactly once."""
    ep = network.nodes["user-b-0"].address
    people = [Person() for _ in range(4)]
    shared = client_mod.multiplexed_channel(grpc.aio.insecure_channel(ep), ep)
    clients = [Client(ep, p.key, channel=shared, retry_for=60) for p in people]
    try:
        for i, c in enumerate(clients):
            await c.create_user(f"Killed{i}")
        done: list[int] = [0] * len(clients)
        some_done = asyncio.Event()

        async def write(i: int, c: Client) -> None:
            for n in range(1, 9):
                got = await c.set_first(c.user_id, f"K{n}")
                assert got.user.first_name.values == [f"K{n}"]
                done[i] = n
                if sum(done) >= 4:
                    some_done.set()

        writers = asyncio.gather(*(write(i, c) for i, c in enumerate(clients)))
        await asyncio.wait_for(some_done.wait(), 60)  # writes on the stream, then the kill
        network.stop_node("user-b-0", sig=signal.SIGKILL)
        await asyncio.sleep(0.5)
        network.start_node("user-b-0")
        await asyncio.wait_for(writers, 120)
        assert done == [8] * len(clients)
        assert sum(c.resends for c in clients) >= 1  # the kill was felt, and re-sent through
        await network.wait_healthy(["user-b-0"])
        for p, c in zip(people, clients, strict=True):
            u = await c.get_user(p.id)
            assert u.sequence == 9 and list(u.first_name.values) == ["K8"]  # once each
    finally:
        await shared.close()


def test_cli_demo_flow(network: LocalNetwork, tmp_path: Path) -> None:
    """The README demo through the real `beco` executable: exit codes and offline proofs."""
    exe = [sys.executable, "-m", "beco_node.cli.beco_cli"]
    common = [
        "--endpoint",
        network.user_endpoints()[0],
        "--membership",
        str(network.membership_path),
    ]

    def beco(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *common, *args], capture_output=True, text=True, timeout=60)

    a, b = str(tmp_path / "alice.key"), str(tmp_path / "bob.key")
    assert beco("keygen", "--out", a).returncode == 0
    assert beco("keygen", "--out", b).returncode == 0
    assert beco("keygen", "--out", a).returncode == 1  # no silent overwrite
    alice = beco("whoami", "--key", a).stdout.strip()
    bob = beco("whoami", "--key", b).stdout.strip()
    assert beco("--key", a, "user", "create", "--first", "Alice", "--last", "Smith").returncode == 0
    assert beco("--key", b, "user", "create", "--first", "Bob").returncode == 0
    denied = beco("--key", b, "set", "first", "--user", alice, "Mallory")
    assert denied.returncode == 10 + grpc.StatusCode.PERMISSION_DENIED.value[0], denied.stderr
    assert "PERMISSION_DENIED" in denied.stderr
    assert beco("--key", a, "grant", "first", bob, "editor").returncode == 0
    ok = beco("--key", b, "--output", "json", "set", "first", "--user", alice, "Alicia")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["user"]["first_name"]["values"] == ["Alicia"]
    # the outcome of a write by its proposal id: committed (0), unknown (1)
    pid = json.loads(ok.stdout)["commit"]["proposal_id"]
    found = beco("--key", b, "outcome", pid)
    assert found.returncode == 0 and "committed: sequence 3" in found.stdout, found.stderr
    assert beco("--key", b, "outcome", "ab" * 32).returncode == 1
    proof = beco("--key", a, "--output", "json", "proof", "inclusion")
    assert proof.returncode == 0, proof.stderr
    assert json.loads(proof.stdout)["verified"] is True
    head = str(tmp_path / "head.json")
    assert beco("--key", a, "tree", "head", "--save", head).returncode == 0
    assert beco("--key", a, "set", "last", "Jones").returncode == 0
    cons = beco("--key", a, "proof", "consistency", "--old-head", head)
    assert cons.returncode == 0 and "OK" in cons.stdout, cons.stderr
    # a wrong SST key makes verification fail
    wrong = beco("--key", a, "--sst-key", "A" * 43 + "=", "proof", "inclusion")
    assert wrong.returncode == 1 and "FAILED" in wrong.stderr
    missing = beco("--key", str(tmp_path / "nope.key"), "user", "get")
    assert missing.returncode == 1 and "cannot read key file" in missing.stderr


async def _metric(port: int, name: str) -> float | None:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    for line in (await asyncio.to_thread(fetch)).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_membership_reload_without_restart(network: LocalNetwork) -> None:
    """Runs last in the module: it edits the membership file and restores it."""
    from beco_node.membership import build

    path = network.membership_path
    original = path.read_text()
    ms = loads(original)
    alice = Person()
    async with alice.client(network, 0) as a:
        await a.create_user("Alice")
    try:
        # user-c-0 leaves the network (2 user nodes, quorum 2), generation 2
        members = [m for m in ms.members if m.name != "user-c-0"]
        path.write_text(build(ms.network, ms.generation + 1, 2, members).dumps())
        vport = network.nodes["validator"].metrics_port
        for _ in range(100):
            if await _metric(vport, "beco_membership_generation") == ms.generation + 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the validator never reloaded the membership")
        assert await _metric(vport, "beco_membership_quorum") == 2
        assert await _metric(vport, "beco_membership_user_nodes") == len(ms.user_nodes) - 1
        sport = network.nodes["sst"].metrics_port
        for _ in range(100):
            if await _metric(sport, "beco_membership_generation") == ms.generation + 1:
                break
            await asyncio.sleep(0.1)
        # the removed node can no longer propose; the others commit with 2 votes
        async with alice.client(network, 2) as c:
            await expect(grpc.StatusCode.UNAVAILABLE, c.set_first(alice.id, "FromRemoved"))
        async with alice.client(network, 0) as a:
            r = await a.set_first(alice.id, "Two")
            assert r.commit.sequence == 2
            hist = await a.history(alice.id)
            leaf = pb.LogLeaf()
            leaf.ParseFromString(hist.entries[-1].leaf_data)
            c_id = next(m.peer_id for m in ms.members if m.name == "user-c-0")
            assert c_id not in leaf.voters and len(leaf.voters) == 2
    finally:
        path.write_text(original)
        for _ in range(100):
            if (
                await _metric(network.nodes["validator"].metrics_port, "beco_membership_generation")
                == ms.generation
            ):
                break
            await asyncio.sleep(0.1)
