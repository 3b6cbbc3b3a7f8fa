"""Peer links (beco_node.calls, beco_node.services.link) over a real grpc.aio server on loopback: replies
matched to calls out of order, statuses identical to the unary call's, deadlines, a stream
broken mid-call, and the fallback to unary calls for a peer without links."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import calls
from beco_node.errors import BecoError
from beco_node.origin import ORIGIN_TRAILER, answered_by_node
from beco_node.services import link
from beco_node.services.malformed import DecodeGuard
from beco_node.services.runtime import rpc_handler

from .loopback import WAIT_S, until


class Voter(ppb_grpc.UserNodeServicer):
    """VoteBatch answers with the envelope's sender as the voter, once its hold is released
    (sender "hold"); ApplyBatch fails as the node would."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.contexts: list[str] = []

    @rpc_handler("user.VoteBatch")
    async def VoteBatch(self, request: ppb.PeerEnvelope, context: Any) -> ppb.BatchVote:
        self.contexts.append(type(context).__name__)
        if request.sender.startswith("hold"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return ppb.BatchVote(voter=request.sender)

    @rpc_handler("user.ApplyBatch")
    async def ApplyBatch(self, request: ppb.PeerEnvelope, context: Any) -> ppb.ApplyReply:
        if request.sender == "bare":  # a status without the node's trailer
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "bare status")
        raise BecoError("not this one", "FAILED_PRECONDITION")


class Peer:
    def __init__(self, serve_links: bool = True) -> None:
        self.voter = Voter()
        self.serve_links = serve_links
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(
            interceptors=[DecodeGuard(ORIGIN_TRAILER)],
            options=[("grpc.max_receive_message_length", 64 * 1024)],
        )
        links = self.links = link.LinkServer(64 * 1024 * 1024)
        ppb_grpc.add_UserNodeServicer_to_server(self.voter, server)
        ppb_grpc.add_UserNodeServicer_to_server(self.voter, links)  # type: ignore[arg-type]
        if self.serve_links:
            ppb_grpc.add_PeerLinkServicer_to_server(links, server)  # type: ignore[arg-type]
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Caller:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.links = calls.Links(self.channel, 64 * 1024)
        self.stub = ppb_grpc.UserNodeStub(
            calls.LinkChannel(self.links, address, self.channel(address))  # type: ignore[arg-type]
        )
        self.plain = ppb_grpc.UserNodeStub(self.channel(address))

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(address)
        return self.channels[address]

    async def wait_up(self) -> None:
        await until(lambda: self.links.get(self.address) is not None)

    async def close(self) -> None:
        await self.links.close()
        for ch in self.channels.values():
            await ch.close(None)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Peer, Caller]]:
    p = Peer()
    await p.start()
    c = Caller(p.address)
    try:
        yield p, c
    finally:
        await c.close()
        await p.stop()


def env(sender: str) -> ppb.PeerEnvelope:
    return ppb.PeerEnvelope(sender=sender, kind="vote_batch")


async def test_link_methods_are_the_envelope_methods() -> None:
    assert "/beco.v1.UserNode/VoteBatch" in calls.PEER_LINK.methods
    assert "/beco.v1.Sst/CommitBatch" in calls.PEER_LINK.methods
    assert "/beco.v1.Validator/ProposeBatch" in calls.PEER_LINK.methods
    assert "/beco.v1.UserNode/ApplyBatch" in calls.PEER_LINK.methods
    assert "/beco.v1.Sst/LoadUsers" not in calls.PEER_LINK.methods  # a server stream: unary
    assert calls.PEER_LINK.stream_method not in calls.PEER_LINK.methods


async def test_replies_are_matched_to_their_calls_out_of_order(
    pair: tuple[Peer, Caller],
) -> None:
    p, c = pair
    await c.wait_up()
    held = asyncio.ensure_future(c.stub.VoteBatch(env("hold-1"), timeout=WAIT_S))
    quick = await c.stub.VoteBatch(env("quick"), timeout=WAIT_S)
    assert quick.voter == "quick" and not held.done()
    p.voter.release.set()
    assert (await held).voter == "hold-1"
    assert p.voter.contexts == ["_LinkContext", "_LinkContext"]


async def test_a_node_status_is_the_unary_calls_status(pair: tuple[Peer, Caller]) -> None:
    _, c = pair
    await c.wait_up()
    for sender in ("node", "bare"):
        errors = []
        for stub in (c.stub, c.plain):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.ApplyBatch(env(sender), timeout=WAIT_S)
            errors.append(ei.value)
        on_link, unary = errors
        assert on_link.code() == unary.code() != grpc.StatusCode.OK
        assert on_link.details() == unary.details()
        assert answered_by_node(on_link) == answered_by_node(unary) == (sender == "node")


async def test_a_malformed_request_and_an_unserved_method(pair: tuple[Peer, Caller]) -> None:
    p, c = pair
    await c.wait_up()
    lk = c.links.get(p.address)
    assert lk is not None
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await lk.call_raw("/beco.v1.UserNode/VoteBatch", b"\xff\xff", WAIT_S)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and answered_by_node(ei.value)
    sst = ppb_grpc.SstStub(calls.LinkChannel(c.links, p.address, c.channel(p.address)))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await sst.CommitBatch(env("x"), timeout=WAIT_S)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED and not answered_by_node(ei.value)


async def test_a_deadline_fails_the_call_and_cancels_the_handler(
    pair: tuple[Peer, Caller],
) -> None:
    p, c = pair
    await c.wait_up()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await c.stub.VoteBatch(env("hold-1"), timeout=0.2)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not answered_by_node(ei.value)
    await asyncio.wait_for(p.voter.cancelled.wait(), WAIT_S)
    assert (await c.stub.VoteBatch(env("after"), timeout=WAIT_S)).voter == "after"


async def test_a_broken_link_fails_pending_calls_and_reopens() -> None:
    p = Peer()
    await p.start()
    c = Caller(p.address)
    try:
        await c.wait_up()
        held = [
            asyncio.ensure_future(c.stub.VoteBatch(env(f"hold-{i}"), timeout=WAIT_S))
            for i in range(3)
        ]
        await until(lambda: len(p.voter.contexts) == 3)
        await p.stop()  # the peer goes away mid-call
        for fut in held:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await fut
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not answered_by_node(ei.value)  # a transport failure, not the node's word
        p2 = Peer()
        p2.port = p.port
        await p2.start()  # back on the same address
        p = p2
        # while the link is down calls go unary (and work); the link reopens meanwhile
        assert (await c.stub.VoteBatch(env("a"), timeout=WAIT_S, wait_for_ready=True)).voter == "a"
        await c.wait_up()
        assert (await c.stub.VoteBatch(env("b"), timeout=WAIT_S)).voter == "b"
        assert p.voter.contexts[-1] == "_LinkContext"
    finally:
        await c.close()
        await p.stop()


async def test_a_peer_without_links_is_called_unary() -> None:
    p = Peer(serve_links=False)  # a node of the previous version
    await p.start()
    c = Caller(p.address)
    try:
        assert (await c.stub.VoteBatch(env("a"), timeout=WAIT_S)).voter == "a"
        await until(lambda: p.address in c.links._unary_until)  # its UNIMPLEMENTED, remembered
        for i in range(3):
            assert c.links.get(p.address) is None
            assert (await c.stub.VoteBatch(env(f"b{i}"), timeout=WAIT_S)).voter == f"b{i}"
        assert set(p.voter.contexts) == {"_ServicerContext"}
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.stub.ApplyBatch(env("node"), timeout=WAIT_S)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert answered_by_node(ei.value)
    finally:
        await c.close()
        await p.stop()


async def test_a_draining_peer_answers_calls_in_flight_and_ends_its_links(
    pair: tuple[Peer, Caller],
) -> None:
    p, c = pair
    await c.wait_up()
    held = asyncio.ensure_future(c.stub.VoteBatch(env("hold-1"), timeout=WAIT_S))
    await until(lambda: len(p.voter.contexts) == 1)
    p.links.drain()  # the node is stopping
    await asyncio.sleep(0.05)
    assert not held.done()
    p.voter.release.set()
    assert (await held).voter == "hold-1"  # answered, not cut
    await until(lambda: c.links._links[p.address].call is None)  # then the link ends


async def test_a_request_too_large_for_a_frame_goes_unary(pair: tuple[Peer, Caller]) -> None:
    p, c = pair
    await c.wait_up()
    big = ppb.PeerEnvelope(sender="big", kind="vote_batch", payload=b"x" * c.links.max_frame_bytes)
    with pytest.raises(grpc.aio.AioRpcError) as ei:  # the peer's own limit refuses it, as before
        await c.stub.VoteBatch(big, timeout=WAIT_S)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert p.voter.contexts == []
    small = ppb.PeerEnvelope(sender="small", payload=b"x" * (c.links.max_frame_bytes - 400))
    assert (await c.stub.VoteBatch(small, timeout=WAIT_S)).voter == "small"
    assert p.voter.contexts == ["_LinkContext"]


async def test_a_dropped_members_link_is_closed(pair: tuple[Peer, Caller]) -> None:
    """When the membership drops an address its link closes (the peer sees the stream end);
    a call to that address later opens a new one."""
    p, c = pair
    await c.wait_up()
    first = c.links.get(p.address)
    await c.links.retain({p.address})  # still a member: kept
    assert c.links.get(p.address) is first
    await c.links.retain({"127.0.0.1:1"})
    assert first is not None and first.call is None and first.task is None
    await c.wait_up()
    assert c.links.get(p.address) is not first
    assert (await c.stub.VoteBatch(env("again"), timeout=WAIT_S)).voter == "again"
