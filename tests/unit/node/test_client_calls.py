"""Clients' ``Identity/Calls`` stream (beco_node.calls, services/link.py) over a real grpc.aio
server on loopback: the same answers and statuses as the unary calls, only the Identity
methods, a bound on the calls one stream runs at once, and a client that shares one stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco.v1 import link_pb2 as lpb
from beco_node import calls
from beco_node.client import multiplexed_channel
from beco_node.errors import BecoError
from beco_node.origin import ORIGIN_TRAILER, answered_by_node
from beco_node.services import link
from beco_node.services.malformed import DecodeGuard
from beco_node.services.runtime import rpc_handler

from .loopback import WAIT_S, until


class Identity(pb_grpc.IdentityServicer):
    """GetTreeHead answers (held while ``hold`` is clear when the tree size asked is 7);
    GetUser fails as the node would for an unknown user."""

    def __init__(self, server: link.LinkServer) -> None:
        self.server = server
        self.hold = asyncio.Event()
        self.running = 0
        self.most = 0
        self.contexts: list[str] = []

    @rpc_handler("identity.GetTreeHead")
    async def GetTreeHead(self, request: pb.GetTreeHeadRequest, context: Any) -> pb.TreeHead:
        self.contexts.append(type(context).__name__)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if request.auth.nonce == b"hold":
                await self.hold.wait()
            return pb.TreeHead(tree_size=len(self.contexts))
        finally:
            self.running -= 1

    @rpc_handler("identity.GetUser")
    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.User:
        raise BecoError(f"no user {request.user_id}", "NOT_FOUND")

    async def Calls(  # type: ignore[override]
        self, request_iterator: AsyncIterator[lpb.LinkFrame], context: Any
    ) -> None:
        await self.server.Link(request_iterator, context)


class Node:
    async def start(self) -> None:
        server = grpc.aio.server(interceptors=[DecodeGuard(ORIGIN_TRAILER)])
        self.calls = link.LinkServer(64 * 1024 * 1024, calls.CLIENT_CALLS)
        self.identity = Identity(self.calls)
        pb_grpc.add_IdentityServicer_to_server(self.identity, server)
        pb_grpc.add_IdentityServicer_to_server(self.identity, self.calls)  # type: ignore[arg-type]
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.server = server
        self.address = f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(None)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = Node()
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def head(nonce: bytes = b"") -> pb.GetTreeHeadRequest:
    return pb.GetTreeHeadRequest(auth=pb.RequestAuth(nonce=nonce))


async def stream_up(ch: Any) -> None:
    await until(lambda: ch.links.get(ch.address) is not None)


def test_the_stream_carries_every_unary_identity_method_and_no_other() -> None:
    service = pb.DESCRIPTOR.services_by_name["Identity"]
    unary = {
        f"/beco.v1.Identity/{m.name}"
        for m in service.methods
        if not (m.client_streaming or m.server_streaming)
    }
    assert calls.CLIENT_CALLS.methods == unary
    assert "/beco.v1.Identity/GetUser" in unary and "/beco.v1.Identity/CreateUser" in unary
    assert calls.CLIENT_CALLS.stream_method == "/beco.v1.Identity/Calls"
    assert calls.CLIENT_CALLS.stream_method not in calls.CLIENT_CALLS.methods
    assert not calls.CLIENT_CALLS.methods & calls.PEER_LINK.methods


async def test_answers_and_statuses_are_the_unary_calls(node: Node) -> None:
    plain = grpc.aio.insecure_channel(node.address)
    ch = multiplexed_channel(grpc.aio.insecure_channel(node.address), node.address)
    try:
        await stream_up(ch)
        on_stream, unary = pb_grpc.IdentityStub(ch), pb_grpc.IdentityStub(plain)
        assert (await on_stream.GetTreeHead(head(), timeout=WAIT_S)).tree_size == 1
        assert (await unary.GetTreeHead(head(), timeout=WAIT_S)).tree_size == 2
        first, second = node.identity.contexts
        assert first == "_LinkContext" and second != "_LinkContext"
        errors = []
        for stub in (on_stream, unary):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.GetUser(pb.GetUserRequest(user_id="nobody"), timeout=WAIT_S)
            errors.append(ei.value)
        assert errors[0].code() == errors[1].code() == grpc.StatusCode.NOT_FOUND
        assert errors[0].details() == errors[1].details() == "no user nobody"
        assert answered_by_node(errors[0]) and answered_by_node(errors[1])
    finally:
        await ch.close()  # type: ignore[call-arg]
        await plain.close()


async def test_only_identity_methods_are_served_on_the_stream(node: Node) -> None:
    """A client's stream never reaches a peer method (those check member signatures only on
    PeerLink), and a malformed request is refused alone, as the unary call would be."""
    ch: Any = multiplexed_channel(grpc.aio.insecure_channel(node.address), node.address)
    try:
        await stream_up(ch)
        lk = ch.links.get(node.address)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await lk.call_raw("/beco.v1.UserNode/VoteBatch", b"", WAIT_S)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await lk.call_raw("/beco.v1.Identity/GetTreeHead", b"\xff\xff", WAIT_S)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the stream still serves
        assert (await pb_grpc.IdentityStub(ch).GetTreeHead(head(), timeout=WAIT_S)).tree_size
    finally:
        await ch.close()


async def test_a_stream_runs_at_most_max_in_flight_calls(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the bound the server stops reading the stream: calls wait, none is refused; a
    call cancelled before its handler ran gives its slot back."""
    monkeypatch.setattr(link, "MAX_IN_FLIGHT", 2)
    ch: Any = multiplexed_channel(grpc.aio.insecure_channel(node.address), node.address)
    try:
        await stream_up(ch)
        stub = pb_grpc.IdentityStub(ch)
        held = [
            asyncio.ensure_future(stub.GetTreeHead(head(b"hold"), timeout=WAIT_S)) for _ in range(5)
        ]
        await until(lambda: node.identity.running == 2)
        await asyncio.sleep(0.3)
        assert node.identity.running == 2 and not any(f.done() for f in held)
        node.identity.hold.set()
        assert len(await asyncio.gather(*held)) == 5
        assert node.identity.most == 2
        # a request and its cancel in one write burst, then more calls than slots
        node.identity.hold.clear()
        lk = ch.links.get(node.address)
        data = head(b"hold").SerializeToString()
        for i in (900, 901):
            lk._put(
                lpb.LinkFrame(
                    call_id=i,
                    request=lpb.LinkRequest(method="/beco.v1.Identity/GetTreeHead", request=data),
                ),
                len(data),
            )
            lk._put(lpb.LinkFrame(call_id=i, cancel=True), 0)
        node.identity.hold.set()
        got = await asyncio.gather(*(stub.GetTreeHead(head(), timeout=WAIT_S) for _ in range(4)))
        assert len(got) == 4
    finally:
        await ch.close()


async def test_clients_share_one_stream(node: Node) -> None:
    ch: Any = multiplexed_channel(grpc.aio.insecure_channel(node.address), node.address)
    try:
        await stream_up(ch)
        stubs = [pb_grpc.IdentityStub(ch) for _ in range(8)]
        before = len(node.identity.contexts)
        await asyncio.gather(*(s.GetTreeHead(head(), timeout=WAIT_S) for s in stubs))
        assert node.identity.contexts[before:] == ["_LinkContext"] * 8
        assert len(ch.links._links) == 1
    finally:
        await ch.close()


def raw_stream(address: str, batching: bool) -> tuple[grpc.aio.Channel, Any]:
    ch = grpc.aio.insecure_channel(address)
    call = ch.stream_stream(
        calls.CLIENT_CALLS.stream_method,
        request_serializer=lpb.LinkFrame.SerializeToString,
        response_deserializer=lpb.LinkFrame.FromString,
    )(metadata=calls.BATCHING if batching else None)
    return ch, call


@pytest.mark.parametrize("batching", [False, True])
async def test_replies_are_batched_only_for_a_caller_that_takes_batches(
    node: Node, batching: bool
) -> None:
    """A caller of the previous version (no ``beco-frames`` metadata) gets one frame per
    message; one that asked gets the replies that complete together in fewer messages."""
    ch, call = raw_stream(node.address, batching)
    try:
        assert calls.takes_batches(await call.initial_metadata()) == batching
        data = head(b"hold").SerializeToString()
        method = "/beco.v1.Identity/GetTreeHead"
        for i in range(1, 21):
            req = lpb.LinkRequest(method=method, request=data, timeout_ms=WAIT_S * 1000)
            await call.write(lpb.LinkFrame(call_id=i, request=req))
        await until(lambda: node.identity.running == 20)
        node.identity.hold.set()  # all twenty answer at once
        ids: list[int] = []
        messages = 0
        while len(ids) < 20:
            message = await call.read()
            messages += 1
            assert bool(message.frames) == (batching and len(message.frames) > 1)
            ids += [f.call_id for f in calls.frames_of(message)]
            assert all(f.reply.code == 0 for f in calls.frames_of(message))
        assert sorted(ids) == list(range(1, 21))
        assert (messages < 20) if batching else (messages == 20)
    finally:
        call.cancel()
        await ch.close()


async def test_a_client_batches_the_calls_queued_behind_a_write(node: Node) -> None:
    ch: Any = multiplexed_channel(grpc.aio.insecure_channel(node.address), node.address)
    try:
        await stream_up(ch)
        lk = ch.links.get(node.address)
        assert lk.outbox.batch  # the node said it takes batches
        before = lk.outbox.messages
        stub = pb_grpc.IdentityStub(ch)
        got = await asyncio.gather(*(stub.GetTreeHead(head(), timeout=WAIT_S) for _ in range(40)))
        assert len({g.tree_size for g in got}) == 40  # forty distinct calls, each answered
        assert lk.outbox.messages - before < 40
    finally:
        await ch.close()


async def test_an_outbox_keeps_order_and_the_size_bound() -> None:
    written: list[list[int]] = []
    gate = asyncio.Event()

    async def write(message: lpb.LinkFrame) -> None:
        written.append([f.call_id for f in calls.frames_of(message)])
        await gate.wait()

    box = calls.Outbox(write, max_bytes=350, batch=True)
    for i in range(1, 11):
        box.put(lpb.LinkFrame(call_id=i, cancel=True), 100)
    gate.set()
    await box.flush()
    assert [i for w in written for i in w] == list(range(1, 11))
    assert written[0] == [1, 2, 3] and all(len(w) <= 3 for w in written)
    single = calls.Outbox(write, max_bytes=350, batch=False)
    written.clear()
    for i in range(1, 4):
        single.put(lpb.LinkFrame(call_id=i, cancel=True), 100)
    await single.flush()
    assert written == [[1], [2], [3]]
