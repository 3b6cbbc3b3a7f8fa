"""The client library's read sessions against the user node's own session code, over the
in-process transport: reads carry a MAC, a restarted node is survived with one re-open,
an older node (no OpenSession) gets signed reads, writes stay signed."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco_node import keys, model
from beco_node.auth import Authenticator
from beco_node.client import Client
from beco_node.clock import ManualClock
from beco_node.services.runtime import rpc_handler
from beco_node.services.user import IdentityService
from beco_node.session import SessionTable
from beco_node.testkit import InProcessNetwork

ADDR = "127.0.0.1:7001"


class Node(IdentityService):
    """The user node's authentication (signed reads, OpenSession, session reads) with a
    GetUser that answers who the caller is and how it proved it."""

    def __init__(self, clock: ManualClock) -> None:
        self.restart(clock)
        self.seen: list[str] = []  # "session" | "signed" per GetUser
        self.writes: list[bytes] = []

    def restart(self, clock: ManualClock) -> None:
        rt = types.SimpleNamespace(now_ms=clock.now_ms, monotonic=clock.monotonic)
        node = types.SimpleNamespace(rt=rt, authn=Authenticator(), sessions=SessionTable())
        super().__init__(node)  # type: ignore[arg-type]

    @rpc_handler("GetUser")
    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.User:
        self.seen.append("session" if request.HasField("session") else "signed")
        caller = self._auth(model.SERVICE + "GetUser", request)
        return pb.User(user_id=caller)

    async def UpdateFirstName(self, request: Any, context: Any) -> pb.MutationResponse:
        self.writes.append(request.auth.signature)
        return pb.MutationResponse()


class OldNode(pb_grpc.IdentityServicer):
    """A node of the version before sessions: OpenSession is unknown to it."""

    def __init__(self) -> None:
        self.authn = Authenticator()

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.User:
        caller = self.authn.authenticate(model.SERVICE + "GetUser", request, ManualClock().ms)
        return pb.User(user_id=caller)


def serve(net: InProcessNetwork, addr: str, svc: object) -> None:
    net.serve(addr, [(pb_grpc.add_IdentityServicer_to_server, svc)])


def client(net: InProcessNetwork, addr: str = ADDR) -> Client:
    return Client(addr, keys.generate_private_key(), channel=net.channel(addr))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    c = ManualClock()
    monkeypatch.setattr("beco_node.client.now_ms", c.now_ms)  # signatures on the node's clock
    return c


async def test_reads_use_one_session_and_authenticate_the_caller(clock: ManualClock) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    for _ in range(5):
        assert (await c.get_user(c.user_id)).user_id == c.user_id
    assert node.seen == ["session"] * 5
    assert c.sessions_opened == 1 and len(node.node.sessions) == 1
    calls = [m.rsplit("/", 1)[1] for _, m in net.calls]
    assert calls == ["OpenSession"] + ["GetUser"] * 5


async def test_a_restarted_node_is_survived_with_one_reopen(clock: ManualClock) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    await c.get_user(c.user_id)
    node.restart(clock)  # a new process: its sessions are gone
    assert (await c.get_user(c.user_id)).user_id == c.user_id
    assert c.sessions_opened == 2
    assert node.seen == ["session", "session", "session"]  # refused once, then re-sent


async def test_concurrent_reads_after_a_restart_reopen_once(clock: ManualClock) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    await c.get_user(c.user_id)
    node.restart(clock)
    got = await asyncio.gather(*(c.get_user(c.user_id) for _ in range(10)))
    assert {u.user_id for u in got} == {c.user_id}
    assert c.sessions_opened == 2


async def test_an_expiring_session_is_reopened_before_the_node_refuses_it(
    clock: ManualClock,
) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    await c.get_user(c.user_id)
    assert c.session is not None
    c.session.opened_at -= c.session.ttl_ms / 1000  # the client's clock says it ended
    await c.get_user(c.user_id)
    assert c.sessions_opened == 2 and node.seen == ["session", "session"]


async def test_sessions_on_another_node_fall_back_to_a_signed_read(clock: ManualClock) -> None:
    """Reads balanced across nodes: sessions open on one, reads land on another, which
    refuses them; after one re-open the read is signed instead of failing."""
    a, b = Node(clock), Node(clock)

    class Balanced(pb_grpc.IdentityServicer):
        async def OpenSession(self, request: Any, context: Any) -> Any:
            return await a.OpenSession(request, context)

        async def GetUser(self, request: Any, context: Any) -> Any:
            return await b.GetUser(request, context)

    net = InProcessNetwork()
    serve(net, ADDR, Balanced())
    c = client(net)
    assert (await c.get_user(c.user_id)).user_id == c.user_id
    assert b.seen == ["session", "session", "signed"] and c.sessions_opened == 2


async def test_an_older_node_gets_signed_reads(clock: ManualClock) -> None:
    net = InProcessNetwork()
    serve(net, ADDR, OldNode())
    del net.servers[ADDR].handlers[model.OPEN_SESSION]  # not in its API: UNIMPLEMENTED
    c = client(net)
    for _ in range(2):
        assert (await c.get_user(c.user_id)).user_id == c.user_id
    assert not c.use_sessions
    assert [m.rsplit("/", 1)[1] for _, m in net.calls] == ["OpenSession", "GetUser", "GetUser"]


async def test_writes_stay_signed_and_sessions_can_be_turned_off(clock: ManualClock) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    await c.set_first(c.user_id, "Ada")
    assert len(node.writes) == 1 and len(node.writes[0]) == 64 and c.sessions_opened == 0
    plain = Client(ADDR, keys.generate_private_key(), channel=net.channel(ADDR), sessions=False)
    await plain.get_user(plain.user_id)
    assert node.seen == ["signed"] and plain.sessions_opened == 0


async def test_a_replayed_session_read_is_refused(clock: ManualClock) -> None:
    net, node = InProcessNetwork(), Node(clock)
    serve(net, ADDR, node)
    c = client(net)
    await c.get_user(c.user_id)
    assert c.session is not None
    req = pb.GetUserRequest(user_id=c.user_id)
    c.session.seal(model.SERVICE + "GetUser", req)
    await c.stub.GetUser(req)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await c.stub.GetUser(req)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in (ei.value.details() or "")
