"""Multiplexed calls: many unary gRPC calls on one long-lived bidi stream, client side.

A unary grpc.aio call costs about three times the CPU of one message on an open stream
(docs/benchmarks.md, "The gRPC floor"). So a caller keeps ONE stream per address and sends
each unary call of the stream's service on it as a framed request ``{call id, method,
request bytes, timeout}`` (link.proto), answered by a frame ``{call id, status code,
details, trailers, reply bytes}`` in completion order. Two streams of this kind exist
(:class:`Mux`): the peers' ``PeerLink/Link`` (every peer method whose request is a
``PeerEnvelope``) and the clients' ``Identity/Calls`` (every unary Identity method). Both
method sets are derived from the proto descriptors. The server side is
``services/link.py``: each frame runs the SAME servicer method as the unary call.

- :class:`LinkChannel` is what the generated stubs use as a channel: a call goes over the
  stream while it is up and answers with the reply or the same ``AioRpcError`` (code,
  details, trailers: ``beco-origin`` when a node answered) as the unary call. A deadline:
  DEADLINE_EXCEEDED, and a cancel frame stops the handler. A broken stream fails every
  pending call UNAVAILABLE without the origin trailer (a transport failure). While no
  stream is up, calls go unary (so connection failures and ``wait_for_ready`` behave as
  before) and at most one attempt per ``REOPEN_S`` opens it.
- Rolling upgrade: a server that answers UNIMPLEMENTED for the stream is called unary for
  ``FALLBACK_S``, then asked again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import link_pb2 as lpb
from beco.v1 import peer_pb2 as ppb

from beco_node import metrics

log = logging.getLogger("beco.link")

REOPEN_S = 1.0  # at most one attempt to open a stream to an address per this long
OPEN_TIMEOUT_S = 2.0
FALLBACK_S = 60.0  # a server without the stream is called unary this long before asking again
# Room for a frame's call id, method name and timeout around the request bytes.
FRAME_OVERHEAD = 256
CODES = {c.value[0]: c for c in grpc.StatusCode}
_ON_LINK = metrics.PEER_CALLS.labels("link")
_UNARY = metrics.PEER_CALLS.labels("unary")


def unary_methods(service: Any, request_type: str | None = None) -> frozenset[str]:
    """The full names of ``service``'s unary-unary methods (whose request is
    ``request_type``, when given)."""
    return frozenset(
        f"/{service.full_name}/{m.name}"
        for m in service.methods
        if not m.client_streaming
        and not m.server_streaming
        and (request_type is None or m.input_type.full_name == request_type)
    )


@dataclass(frozen=True)
class Mux:
    """One kind of multiplexed stream: its stream method and the unary methods it carries."""

    stream_method: str
    methods: frozenset[str]
    peer: bool  # counted in beco_peer_calls_total (a node's calls to its peers)


_ENVELOPE = ppb.PeerEnvelope.DESCRIPTOR.full_name
_PEER_LINK = ppb.DESCRIPTOR.services_by_name["PeerLink"]
PEER_LINK = Mux(
    f"/{_PEER_LINK.full_name}/{_PEER_LINK.methods_by_name['Link'].name}",
    frozenset().union(
        *(unary_methods(s, _ENVELOPE) for s in ppb.DESCRIPTOR.services_by_name.values())
    ),
    peer=True,
)
_IDENTITY = pb.DESCRIPTOR.services_by_name["Identity"]
CLIENT_CALLS = Mux(
    f"/{_IDENTITY.full_name}/{_IDENTITY.methods_by_name['Calls'].name}",
    unary_methods(_IDENTITY),
    peer=False,
)


def rpc_error(
    code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details, None
    )


# A batch of frames stays within gRPC's default receive limit, so a receiver with default
# settings that asked for batches never gets one it refuses (a single frame: the old rules).
BATCH_MAX_BYTES = 4 * 1024 * 1024
FRAMES_KEY = "beco-frames"  # metadata on opening: this side reads several frames per message
BATCHING = ((FRAMES_KEY, "1"),)


def takes_batches(metadata: Any) -> bool:
    return any(k == FRAMES_KEY for k, _ in metadata or ())


def frames_of(message: lpb.LinkFrame) -> Sequence[lpb.LinkFrame]:
    """The frames one stream message carries: itself, or the batch in ``frames``."""
    return message.frames or (message,)


class Outbox:
    """The frames to write on one stream, in order, one write at a time. Frames that queue
    while a write is in flight go together in the next message (``LinkFrame.frames``, up to
    ``max_bytes``) when the other side said it takes batches (``BATCHING``); when idle a frame
    is written at once, so batching adds no wait. A gRPC message costs about the same
    whatever it carries (docs/benchmarks.md), so under load this divides that cost. A
    failed write stops the outbox (the stream is broken: its reader fails the calls)."""

    def __init__(
        self, write: Callable[[lpb.LinkFrame], Awaitable[Any]], max_bytes: int, batch: bool
    ) -> None:
        self._write = write
        self.max_bytes = max_bytes
        self.batch = batch
        self._queue: collections.deque[tuple[lpb.LinkFrame, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None
        self.messages = 0  # stream messages written (for tests and figures)

    def put(self, frame: lpb.LinkFrame, size: int) -> None:
        """Queue ``frame`` (``size``: its bytes, near enough) to be written."""
        if self.failed is not None:
            raise self.failed
        self._queue.append((frame, size))
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                frame, total = queue.popleft()
                if self.batch and queue:
                    frames = [frame]
                    while queue and total + queue[0][1] <= self.max_bytes:
                        f, n = queue.popleft()
                        frames.append(f)
                        total += n
                    if len(frames) > 1:
                        frame = lpb.LinkFrame(frames=frames)
                self.messages += 1
                await self._write(frame)
        except (Exception, asyncio.CancelledError) as exc:
            self.failed = exc
            queue.clear()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait until everything queued is written (or the outbox failed)."""
        while self._task is not None:
            await asyncio.wait({self._task})

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Link:
    """One stream to one address, its pending calls by id."""

    def __init__(self, links: Links, address: str) -> None:
        self.links = links
        self.address = address
        self.call: Any = None  # the open stream (grpc.aio.StreamStreamCall) while up
        self.pending: dict[int, asyncio.Future[lpb.LinkReply]] = {}
        self.next_id = 1
        self.last_attempt = -math.inf
        self.task: asyncio.Task[None] | None = None
        self.outbox: Outbox | None = None

    def up(self) -> bool:
        """Whether calls can go on the link; when not, start opening it (bounded)."""
        if self.call is not None:
            return True
        now = time.monotonic()
        if self.task is None and now - self.last_attempt >= REOPEN_S:
            self.last_attempt = now
            self.task = asyncio.ensure_future(self._run())
        return False

    async def _run(self) -> None:
        ch: Any = self.links.channel(self.address)
        call: Any = ch.stream_stream(
            self.links.mux.stream_method,
            request_serializer=lpb.LinkFrame.SerializeToString,
            response_deserializer=lpb.LinkFrame.FromString,
        )(metadata=BATCHING)
        reason = "closed"
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                # the server's (LinkServer sends them at once): whether it takes batches
                opened = await call.initial_metadata()
            if call.done():
                await call.wait_for_connection()  # raises the status that ended it
            self.outbox = Outbox(
                call.write,
                min(self.links.max_frame_bytes, BATCH_MAX_BYTES),
                takes_batches(opened),
            )
            self.call = call
            self.links.event("opened")
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                    reason = "closed by the server"
                    break
                for frame in frames_of(message):
                    fut = self.pending.pop(frame.call_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame.reply)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("%s serves no %s: calling it unary", self.address, self.links.name)
                self.links.event("unary_fallback")
                self.links.fallback(self.address)
            reason = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            reason = "no answer to the link's opening"
        except Exception as exc:  # the stream failed some other way: the same, broken
            reason = repr(exc)
        finally:
            if self.call is not None:
                self.links.event("broken")
            self.call = None
            self.task = None
            if self.outbox is not None:
                self.outbox.close()
                self.outbox = None
            call.cancel()
            pending, self.pending = self.pending, {}
            for fut in pending.values():
                if not fut.done():  # each its own error: raised in different tasks
                    fut.set_exception(
                        rpc_error(
                            grpc.StatusCode.UNAVAILABLE,
                            f"{self.links.name} to {self.address} broken: {reason}",
                        )
                    )

    def _put(self, frame: lpb.LinkFrame, size: int) -> None:
        outbox = self.outbox
        if self.call is None or outbox is None:
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE, f"{self.links.name} to {self.address} broken"
            )
        try:
            outbox.put(frame, size)
        except BaseException as exc:  # a write failed: the stream is broken
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.links.name} to {self.address} broken: {exc!r}",
            ) from None

    def _cancel(self, call_id: int) -> None:
        """Tell the server to stop a call (best effort)."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            self._put(lpb.LinkFrame(call_id=call_id, cancel=True), FRAME_OVERHEAD)

    async def call_raw(self, method: str, data: bytes, timeout: float | None) -> bytes:  # noqa: ASYNC109
        call_id = self.next_id
        self.next_id += 1
        fut: asyncio.Future[lpb.LinkReply] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        ms = 0 if timeout is None else max(1, math.ceil(timeout * 1000))
        frame = lpb.LinkFrame(
            call_id=call_id, request=lpb.LinkRequest(method=method, request=data, timeout_ms=ms)
        )
        sent = False
        try:
            async with asyncio.timeout(timeout):
                self._put(frame, len(data) + FRAME_OVERHEAD)
                sent = True
                reply = await fut
        except TimeoutError:
            if sent:
                self._cancel(call_id)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            if sent and not fut.done():
                self._cancel(call_id)
            raise
        finally:
            self.pending.pop(call_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # a break that came before the write failed: seen
        if reply.code:
            raise rpc_error(
                CODES.get(reply.code, grpc.StatusCode.UNKNOWN),
                reply.details,
                [(t.key, t.value) for t in reply.trailers],
            )
        return reply.reply

    async def close(self) -> None:
        task = self.task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Links:
    """A process's streams of one :class:`Mux`, one per address, over the channels
    ``channel`` gives."""

    def __init__(
        self,
        channel: Callable[[str], grpc.aio.Channel],
        max_frame_bytes: int,
        mux: Mux = PEER_LINK,
    ) -> None:
        self.channel = channel
        self.max_frame_bytes = max_frame_bytes
        self.mux = mux
        self.name = "link" if mux.peer else "call stream"
        self._links: dict[str, _Link] = {}
        self._unary_until: dict[str, float] = {}  # address -> when to ask for a link again

    def get(self, address: str) -> _Link | None:
        """The address's link if it is up, else None (call unary; the link opens meanwhile)."""
        until = self._unary_until.get(address)
        if until is not None:
            if time.monotonic() < until:
                return None
            del self._unary_until[address]
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self, address)
        return link if link.up() else None

    async def retain(self, addresses: set[str]) -> None:
        """Close the streams to every other address (members the membership dropped); a
        call to such an address later opens a new one."""
        for address in [a for a in self._links if a not in addresses]:
            await self._links.pop(address).close()

    def fallback(self, address: str) -> None:
        self._unary_until[address] = time.monotonic() + FALLBACK_S

    def event(self, what: str) -> None:
        if self.mux.peer:
            metrics.PEER_LINK_EVENTS.labels(what).inc()

    def routed(self, on_link: bool) -> None:
        if self.mux.peer:
            (_ON_LINK if on_link else _UNARY).inc()

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()


class _LinkedUnary:
    """A unary method of a stub on a :class:`LinkChannel`: on the stream while it is up."""

    def __init__(
        self,
        links: Links,
        address: str,
        method: str,
        unary: Any,
        serializer: Callable[[Any], bytes],
        deserializer: Callable[[bytes], Any],
    ) -> None:
        self.links, self.address, self.method, self.unary = links, address, method, unary
        self.serializer, self.deserializer = serializer, deserializer

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        wait_for_ready: bool | None = None,
        **kwargs: Any,
    ) -> Awaitable[Any]:
        link = None if metadata or kwargs else self.links.get(self.address)
        if link is None:
            self.links.routed(False)
            return self.unary(  # type: ignore[no-any-return]
                request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready, **kwargs
            )
        return self._on_link(link, request, timeout)

    async def _on_link(self, link: _Link, request: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        data = self.serializer(request)
        if len(data) + FRAME_OVERHEAD > self.links.max_frame_bytes:
            self.links.routed(False)
            return await self.unary(request, timeout=timeout)  # the server refuses it as before
        self.links.routed(True)
        return self.deserializer(await link.call_raw(self.method, data, timeout))


class LinkChannel:
    """What the generated stubs use of a channel, for one address: the methods the links'
    :class:`Mux` carries go on the address's stream while it is up, the rest on
    ``channel``. ``owns_links``: ``close`` closes the links too (a client's own)."""

    def __init__(
        self, links: Links, address: str, channel: grpc.aio.Channel, owns_links: bool = False
    ) -> None:
        self.links = links
        self.address = address
        self.channel = channel
        self.owns_links = owns_links
        self._methods: dict[str, Any] = {}  # the stubs ask for every method on each use

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **kwargs: Any,
    ) -> Any:
        mc = self._methods.get(method)
        if mc is None:
            mc = self.channel.unary_unary(
                method, request_serializer, response_deserializer, **kwargs
            )
            if method in self.links.mux.methods:
                mc = _LinkedUnary(
                    self.links,
                    self.address,
                    method,
                    mc,
                    request_serializer,
                    response_deserializer,
                )
            self._methods[method] = mc
        return mc

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.stream_stream(*args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        if self.owns_links:
            await self.links.close()
        await self.channel.close(grace)


def multiplexed(channel: grpc.aio.Channel, address: str, max_frame_bytes: int) -> LinkChannel:
    """``channel`` (to one user node at ``address``) with its unary Identity calls on one
    ``Identity/Calls`` stream; closing it closes the stream."""
    links = Links(lambda _: channel, max_frame_bytes, CLIENT_CALLS)
    return LinkChannel(links, address, channel, owns_links=True)
