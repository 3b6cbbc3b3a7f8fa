"""Multiplexed call streams, server side: ``PeerLink/Link`` for the peers and
``Identity/Calls`` for the clients (the protocol and the client side: ``beco_node.calls``).

Each request frame runs the SAME servicer method the unary call runs (``rpc_handler``:
metrics, error mapping and every check, the request's signature included), in its own task,
with a context whose ``abort`` becomes the error frame; the frame's timeout cancels the
handler as gRPC cancels a unary handler whose deadline passed. A method the stream does not
carry: UNIMPLEMENTED. At most ``MAX_IN_FLIGHT`` calls of one stream run at once: beyond
that the server stops reading it, so a caller is slowed by flow control, not refused.

- ``--peer-links off``: no peer links served or used (the test kit's in-process transport
  keeps unary calls, so its faults per method name hit them as before). ``Identity/Calls``
  is always served.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
from beco.v1 import link_pb2 as lpb

from beco_node import metrics
from beco_node.calls import (
    BATCH_MAX_BYTES,
    BATCHING,
    FRAME_OVERHEAD,
    PEER_LINK,
    Mux,
    Outbox,
    frames_of,
    takes_batches,
)
from beco_node.origin import ORIGIN_TRAILER
from beco_node.services.malformed import refuse

log = logging.getLogger("beco.link")

MAX_IN_FLIGHT = 1024  # calls of one stream running at once; then the stream is not read


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
) -> lpb.LinkReply:
    return lpb.LinkReply(
        code=code.value[0],
        details=details,
        trailers=[lpb.LinkTrailer(key=k, value=v) for k, v in trailers],
    )


class LinkServer:
    """Serves one :class:`~beco_node.calls.Mux`'s stream (``Link``: the ``PeerLink``
    servicer method; ``Identity/Calls`` delegates to it). It collects the handlers of the
    servicers registered with it (the ``add_*Servicer_to_server`` calling convention, see
    ``Runtime.add_servicer``), those of the mux's methods."""

    def __init__(self, max_reply_bytes: int, mux: Mux = PEER_LINK) -> None:
        self.handlers: dict[str, Any] = {}  # full method name -> grpc.RpcMethodHandler
        self.max_reply_bytes = max_reply_bytes
        self.mux = mux
        self.served = metrics.STREAM_CALLS.labels("link" if mux.peer else "calls")
        self.draining = asyncio.Event()

    def drain(self) -> None:
        """The node is stopping: every stream answers its calls in flight, takes no more and
        ends, so the server's grace is not spent waiting on streams that never end."""
        self.draining.set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        del handlers  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, h in handlers.items():
            if f"/{service}/{name}" in self.mux.methods:
                self.handlers[f"/{service}/{name}"] = h

    async def Link(
        self,
        request_iterator: AsyncIterator[lpb.LinkFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # the caller's sign that the stream is up; batches of replies if it takes them
        batch = takes_batches(context.invocation_metadata())
        await context.send_initial_metadata(BATCHING if batch else ())
        outbox = Outbox(context.write, min(self.max_reply_bytes, BATCH_MAX_BYTES), batch)
        calls: dict[int, asyncio.Task[None]] = {}
        room = asyncio.Event()  # set while fewer than MAX_IN_FLIGHT calls run
        room.set()

        async def serve(call_id: int, req: lpb.LinkRequest) -> None:
            reply = await self.dispatch(req)
            size = len(reply.reply) + len(reply.details) + FRAME_OVERHEAD
            with contextlib.suppress(Exception):  # the stream broke: nobody to answer
                outbox.put(lpb.LinkFrame(call_id=call_id, reply=reply), size)

        def done(call_id: int, _: object) -> None:  # also for a task cancelled before it ran
            calls.pop(call_id, None)
            room.set()

        async def read() -> None:
            async for message in request_iterator:
                for frame in frames_of(message):
                    kind = frame.WhichOneof("frame")
                    if kind == "request" and frame.call_id not in calls:
                        while len(calls) >= MAX_IN_FLIGHT:  # stop reading: flow control
                            room.clear()
                            await room.wait()
                        task = calls[frame.call_id] = asyncio.ensure_future(
                            serve(frame.call_id, frame.request)
                        )
                        task.add_done_callback(functools.partial(done, frame.call_id))
                    elif kind == "cancel":
                        running = calls.get(frame.call_id)
                        if running is not None:
                            running.cancel()

        reader = asyncio.ensure_future(read())
        draining = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({reader, draining}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and (reader.cancelled() or reader.exception() is not None):
                return  # the stream broke: its calls are cancelled below
            reader.cancel()  # the caller finished writing, or this node stops taking calls
            # answer what is in flight, then end the stream (the caller reopens it)
            await asyncio.gather(*calls.values(), return_exceptions=True)
            await outbox.flush()
        finally:
            outbox.close()
            reader.cancel()
            draining.cancel()
            for task in list(calls.values()):  # the caller is gone: as gRPC cancels its calls
                task.cancel()

    async def dispatch(self, req: lpb.LinkRequest) -> lpb.LinkReply:
        """Run one request through its unary handler; its answer or status as a reply."""
        self.served.inc()
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
            log.exception("unexpected error serving %s on a stream", req.method)
            return _reply(grpc.StatusCode.UNKNOWN, "Unexpected error in the handler")
        data: bytes = h.response_serializer(resp)
        if len(data) + FRAME_OVERHEAD > self.max_reply_bytes:
            return _reply(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"reply of {len(data)} bytes is larger than a stream's frame may be",
                ORIGIN_TRAILER,
            )
        return lpb.LinkReply(reply=data)
