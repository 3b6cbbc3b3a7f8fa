"""Malformed requests get INVALID_ARGUMENT, not UNKNOWN.

grpc.aio decodes a request with the handler's ``request_deserializer`` before any
servicer code runs; when that raises (bytes that are not the message, a ``string``
field holding invalid UTF-8), grpc logs a traceback at error level and answers
UNKNOWN, and ``rpc_handler`` never sees the call. This interceptor hands the handler
raw bytes instead and decodes them itself: an undecodable request is answered
INVALID_ARGUMENT with the decoder's reason, counted in ``beco_rpc_requests_total``
and logged once at warning, without a traceback.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from beco_node import metrics

log = logging.getLogger("beco.rpc")
# rpc_handler's label prefix per peer service (the public Identity API has none)
_SERVICE_LABELS = {"Validator": "validator", "UserNode": "user", "Sst": "sst"}


def method_label(method: str) -> str:
    """The ``method`` label rpc_handler uses for a full gRPC method name."""
    service, _, name = method.rpartition("/")
    short = service.rsplit(".", 1)[-1].lstrip("/")
    if short == "Identity":
        return name
    return f"{_SERVICE_LABELS.get(short, short.lower())}.{name}"


class _Malformed(Exception):
    pass


def _decode(deserializer: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # DecodeError, UnicodeDecodeError, ...
        raise _Malformed(str(exc) or type(exc).__name__) from None


async def refuse(
    method: str,
    reason: str,
    context: grpc.aio.ServicerContext[Any, Any],
    trailer: tuple[tuple[str, str], ...],
) -> None:
    label = method_label(method)
    metrics.RPC_REQUESTS.labels(label, "INVALID_ARGUMENT").inc()
    log.warning("malformed request to %s: %s", method, reason)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {reason}", trailer)


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Decode unary requests inside the call, so a bad request becomes INVALID_ARGUMENT.
    ``trailer``: the trailing metadata every status of this node carries."""

    def __init__(self, trailer: tuple[tuple[str, str], ...] = ()) -> None:
        self.trailer = trailer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        original = await continuation(handler_call_details)
        handler: Any = original
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return original  # streams written with context.write (health Watch): left as they are
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    request = _decode(deserializer, raw)
                except _Malformed as exc:
                    await refuse(method, str(exc), context, self.trailer)
                    return None
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_us: Any = handler.unary_stream

            async def unary_stream(
                raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    request = _decode(deserializer, raw)
                except _Malformed as exc:
                    await refuse(method, str(exc), context, self.trailer)
                    return
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, response_serializer=handler.response_serializer
            )
        return original  # streams written with context.write (health Watch): left as they are
