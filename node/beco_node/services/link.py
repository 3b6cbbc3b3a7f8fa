"""Peer links: the node-to-node calls over one long-lived gRPC stream per peer address.

A unary grpc.aio call costs about twice the CPU and round trip of one message on an open
bidi stream (docs/benchmarks.md, "The gRPC floor"), so a node keeps ONE ``PeerLink/Link``
stream per peer address it calls, and every peer method whose request is a
``PeerEnvelope`` (:data:`LINK_METHODS`) travels on it as a framed request
``{call id, method, request bytes, timeout}``, answered by a frame
``{call id, status code, details, trailers, reply bytes}`` in completion order.

- Server side (:class:`LinkServer`): each request frame runs the SAME servicer method the
  unary call runs (``rpc_handler``: metrics, error mapping and every check, the envelope's
  signature included), in its own task, with a context whose ``abort`` becomes the error
  frame; the frame's timeout cancels the handler as gRPC cancels a unary handler whose
  deadline passed. A method the node does not serve: UNIMPLEMENTED.
- Client side (:class:`PeerChannel`, what ``Runtime.peer_channel`` returns): the generated
  stubs call it like a channel. A call goes over the link while it is up and answers with
  the reply or the same ``AioRpcError`` (code, details, trailers: ``beco-origin`` when a node
  answered) as the unary call. A deadline: DEADLINE_EXCEEDED, and a cancel frame stops the
  handler. A broken stream fails every pending call UNAVAILABLE without the origin trailer
  (a transport failure). While no link is up, calls go unary (so connection failures and
  ``wait_for_ready`` behave as before) and at most one attempt per ``REOPEN_S`` opens it.
- Rolling upgrade: a peer that answers UNIMPLEMENTED for ``Link`` is called unary for
  ``FALLBACK_S``, then asked again.
- ``--peer-links off``: no links served or used (the test kit's in-process transport keeps
  unary calls, so its faults per method name hit them as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
from beco.v1 import peer_pb2 as ppb

from beco_node import metrics
from beco_node.origin import ORIGIN_TRAILER
from beco_node.services.malformed import refuse

log = logging.getLogger("beco.link")

LINK_METHOD = "/beco.v1.PeerLink/Link"
REOPEN_S = 1.0  # at most one attempt to open a link to an address per this long
OPEN_TIMEOUT_S = 2.0
FALLBACK_S = 60.0  # a peer without links is called unary this long before asking again
# Room for a frame's call id, method name and timeout around the request bytes.
FRAME_OVERHEAD = 256
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_ON_LINK = metrics.PEER_CALLS.labels("link")
_UNARY = metrics.PEER_CALLS.labels("unary")


def _link_methods() -> frozenset[str]:
    envelope = ppb.PeerEnvelope.DESCRIPTOR.full_name
    return frozenset(
        f"/{svc.full_name}/{m.name}"
        for svc in ppb.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
        if m.input_type.full_name == envelope and not m.client_streaming and not m.server_streaming
    )


# Every unary peer method whose request is a PeerEnvelope (derived from peer.proto).
LINK_METHODS = _link_methods()


def rpc_error(
    code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details, None
    )


# ---- server side ----
class _Abort(grpc.aio.AbortError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...]
    ) -> None:
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers


class _LinkContext:
    """What handlers use of a ``grpc.aio.ServicerContext``, for a call that came on a link."""

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str]] = (),
    ) -> NoReturn:
        raise _Abort(code, details, tuple(trailing_metadata))

    def invocation_metadata(self) -> tuple[()]:
        return ()


def _reply(
    code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()
) -> ppb.LinkReply:
    return ppb.LinkReply(
        code=code.value[0],
        details=details,
        trailers=[ppb.LinkTrailer(key=k, value=v) for k, v in trailers],
    )


class LinkServer:
    """The ``PeerLink`` servicer. It collects the handlers of the servicers registered with
    it (the ``add_*Servicer_to_server`` calling convention, see ``Runtime.add_servicer``)."""

    def __init__(self, max_reply_bytes: int) -> None:
        self.handlers: dict[str, Any] = {}  # full method name -> grpc.RpcMethodHandler
        self.max_reply_bytes = max_reply_bytes
        self.draining = asyncio.Event()

    def drain(self) -> None:
        """The node is stopping: every link answers its calls in flight, takes no more and
        ends, so the server's grace is not spent waiting on streams that never end."""
        self.draining.set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        del handlers  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, h in handlers.items():
            if f"/{service}/{name}" in LINK_METHODS:
                self.handlers[f"/{service}/{name}"] = h

    async def Link(
        self,
        request_iterator: AsyncIterator[ppb.LinkFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        await context.send_initial_metadata(())  # the caller's sign that the link is up
        lock = asyncio.Lock()
        calls: dict[int, asyncio.Task[None]] = {}

        async def serve(call_id: int, req: ppb.LinkRequest) -> None:
            try:
                reply = await self.dispatch(req)
                async with lock:
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await context.write(ppb.LinkFrame(call_id=call_id, reply=reply))
            finally:
                calls.pop(call_id, None)

        async def read() -> None:
            async for frame in request_iterator:
                kind = frame.WhichOneof("frame")
                if kind == "request" and frame.call_id not in calls:
                    calls[frame.call_id] = asyncio.ensure_future(
                        serve(frame.call_id, frame.request)
                    )
                elif kind == "cancel":
                    task = calls.get(frame.call_id)
                    if task is not None:
                        task.cancel()

        reader = asyncio.ensure_future(read())
        draining = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({reader, draining}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and (reader.cancelled() or reader.exception() is not None):
                return  # the stream broke: its calls are cancelled below
            reader.cancel()  # the caller finished writing, or this node stops taking calls
            # answer what is in flight, then end the stream (the caller reopens it)
            await asyncio.gather(*calls.values(), return_exceptions=True)
        finally:
            reader.cancel()
            draining.cancel()
            for task in list(calls.values()):  # the caller is gone: as gRPC cancels its calls
                task.cancel()

    async def dispatch(self, req: ppb.LinkRequest) -> ppb.LinkReply:
        """Run one request through its unary handler; its answer or status as a reply."""
        h = self.handlers.get(req.method)
        if h is None:
            return _reply(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {req.method}")
        ctx: Any = _LinkContext()
        try:
            try:
                request = h.request_deserializer(req.request)
            except Exception as exc:  # as DecodeGuard: INVALID_ARGUMENT, counted and logged
                await refuse(req.method, str(exc) or type(exc).__name__, ctx, ORIGIN_TRAILER)
            if req.timeout_ms:
                async with asyncio.timeout(req.timeout_ms / 1000):
                    resp = await h.unary_unary(request, ctx)
            else:
                resp = await h.unary_unary(request, ctx)
        except _Abort as a:
            return _reply(a.code, a.details, a.trailers)
        except TimeoutError:
            return _reply(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except Exception:  # what grpc answers for an exception a handler let out
            log.exception("unexpected error serving %s on a link", req.method)
            return _reply(grpc.StatusCode.UNKNOWN, "Unexpected error in the handler")
        data: bytes = h.response_serializer(resp)
        if len(data) + FRAME_OVERHEAD > self.max_reply_bytes:
            return _reply(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"reply of {len(data)} bytes is larger than a link frame may be",
                ORIGIN_TRAILER,
            )
        return ppb.LinkReply(reply=data)


# ---- client side ----
class _Link:
    """One stream to one address, its pending calls by id."""

    def __init__(self, links: PeerLinks, address: str) -> None:
        self.links = links
        self.address = address
        self.call: Any = None  # the open stream (grpc.aio.StreamStreamCall) while up
        self.pending: dict[int, asyncio.Future[ppb.LinkReply]] = {}
        self.next_id = 1
        self.last_attempt = -math.inf
        self.task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()  # one write at a time
        self.writes: set[asyncio.Task[None]] = set()

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
            LINK_METHOD,
            request_serializer=ppb.LinkFrame.SerializeToString,
            response_deserializer=ppb.LinkFrame.FromString,
        )()
        reason = "closed"
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                await call.initial_metadata()  # the peer's (LinkServer sends them at once)
            if call.done():
                await call.wait_for_connection()  # raises the status that ended it
            self.call = call
            metrics.PEER_LINK_EVENTS.labels("opened").inc()
            while True:
                frame = await call.read()
                if frame is grpc.aio.EOF:  # type: ignore[attr-defined]
                    reason = "closed by the peer"
                    break
                fut = self.pending.pop(frame.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame.reply)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("peer %s serves no links: calling it unary", self.address)
                metrics.PEER_LINK_EVENTS.labels("unary_fallback").inc()
                self.links.fallback(self.address)
            reason = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            reason = "no answer to the link's opening"
        except Exception as exc:  # the stream failed some other way: the same, broken
            reason = repr(exc)
        finally:
            if self.call is not None:
                metrics.PEER_LINK_EVENTS.labels("broken").inc()
            self.call = None
            self.task = None
            call.cancel()
            pending, self.pending = self.pending, {}
            for fut in pending.values():
                if not fut.done():  # each its own error: raised in different tasks
                    fut.set_exception(
                        rpc_error(
                            grpc.StatusCode.UNAVAILABLE,
                            f"link to {self.address} broken: {reason}",
                        )
                    )

    async def _write(self, frame: ppb.LinkFrame) -> None:
        call = self.call
        if call is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"link to {self.address} broken")
        async with self.lock:
            try:
                await call.write(frame)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                raise rpc_error(
                    grpc.StatusCode.UNAVAILABLE, f"link to {self.address} broken: {exc!r}"
                ) from None

    def _cancel(self, call_id: int) -> None:
        """Tell the peer to stop a call (best effort, in the background)."""

        async def send() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._write(ppb.LinkFrame(call_id=call_id, cancel=True))

        task = asyncio.ensure_future(send())
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)

    async def call_raw(self, method: str, data: bytes, timeout: float | None) -> bytes:  # noqa: ASYNC109
        call_id = self.next_id
        self.next_id += 1
        fut: asyncio.Future[ppb.LinkReply] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        ms = 0 if timeout is None else max(1, math.ceil(timeout * 1000))
        frame = ppb.LinkFrame(
            call_id=call_id, request=ppb.LinkRequest(method=method, request=data, timeout_ms=ms)
        )
        sent = False
        try:
            async with asyncio.timeout(timeout):
                await self._write(frame)
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
                _CODES.get(reply.code, grpc.StatusCode.UNKNOWN),
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
        for w in list(self.writes):
            w.cancel()


class PeerLinks:
    """A process's links, one per peer address, over the channels ``channel`` gives."""

    def __init__(self, channel: Callable[[str], grpc.aio.Channel], max_frame_bytes: int) -> None:
        self.channel = channel
        self.max_frame_bytes = max_frame_bytes
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

    def fallback(self, address: str) -> None:
        self._unary_until[address] = time.monotonic() + FALLBACK_S

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()


class _LinkedUnary:
    """A unary method of a stub on a ``PeerChannel``: on the link while it is up."""

    def __init__(
        self,
        links: PeerLinks,
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
            _UNARY.inc()
            return self.unary(  # type: ignore[no-any-return]
                request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready, **kwargs
            )
        return self._on_link(link, request, timeout)

    async def _on_link(self, link: _Link, request: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        data = self.serializer(request)
        if len(data) + FRAME_OVERHEAD > self.links.max_frame_bytes:
            _UNARY.inc()
            return await self.unary(request, timeout=timeout)  # the peer refuses it as before
        _ON_LINK.inc()
        return self.deserializer(await link.call_raw(self.method, data, timeout))


class PeerChannel:
    """What the generated stubs use of a channel, for one peer address: the methods of
    :data:`LINK_METHODS` go on the address's link while it is up, the rest on ``channel``."""

    def __init__(self, links: PeerLinks, address: str, channel: grpc.aio.Channel) -> None:
        self.links = links
        self.address = address
        self.channel = channel
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
            if method in LINK_METHODS:
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
        await self.channel.close(grace)
