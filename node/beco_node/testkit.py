"""Test kit: an in-process transport, so the validator, the SST and user nodes run
together in one event loop without sockets, with faults injected per call.

    net = InProcessNetwork()
    rt = Runtime(settings, clock, transport=net.channel)       # every peer call goes here
    net.serve(address, [(ppb_grpc.add_SstServicer_to_server, sst)])
    net.faults.append(Fault(address="127.0.0.1:7003", method="ApplyBatch", drop="request"))

A call runs the servicer's handler (through ``rpc_handler``, as a server would) on
messages serialised and parsed again, with the caller's ``timeout`` enforced by
cancelling the handler (as gRPC cancels a server-side call whose deadline passed).
A :class:`Fault` makes calls fail with UNAVAILABLE before the handler runs
(``drop="request"``) or after it ran (``drop="reply"``: the work is done, the answer
lost), or holds them until an event is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from beco_node.calls import rpc_error


@dataclass
class Fault:
    address: str = ""  # "" = every address
    method: str = ""  # the RPC name ("CommitBatch") or "" = every method
    drop: str = ""  # "request" | "reply" | "" (only hold)
    times: int = -1  # how many calls it hits (-1: until removed)
    hold: asyncio.Event | None = None  # calls wait for this before running
    hits: int = field(default=0)

    def matches(self, address: str, method: str) -> bool:
        if self.times == 0:
            return False
        name = method.rsplit("/", 1)[-1]
        return (not self.address or self.address == address) and (
            not self.method or self.method == name
        )


class _Context:
    """What handlers use of a ``grpc.aio.ServicerContext``."""

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        raise rpc_error(code, details, trailing_metadata)

    def invocation_metadata(self) -> tuple[()]:
        return ()


class _Server:
    """Collects what the generated ``add_*Servicer_to_server`` functions register."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        del handlers  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, h in handlers.items():
            self.handlers[f"/{service}/{name}"] = h


class InProcessNetwork:
    def __init__(self) -> None:
        self.servers: dict[str, _Server] = {}
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []  # (address, method), in call order

    def serve(self, address: str, adders: list[tuple[Callable[[Any, Any], None], Any]]) -> None:
        server = self.servers.setdefault(address, _Server())
        for add, servicer in adders:
            add(servicer, server)

    def stop(self, address: str) -> None:
        """The node at ``address`` is gone: calls to it fail with UNAVAILABLE."""
        self.servers.pop(address, None)

    def channel(self, address: str) -> grpc.aio.Channel:
        return _Channel(self, address)  # type: ignore[return-value]

    def _fault(self, address: str, method: str) -> Fault | None:
        for f in self.faults:
            if f.matches(address, method):
                f.hits += 1
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    def _handler(self, address: str, method: str) -> Any:
        server = self.servers.get(address)
        if server is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {address}")
        h = server.handlers.get(method)
        if h is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"{method} not served at {address}")
        return h

    async def unary(
        self, address: str, method: str, data: bytes, deadline_s: float | None
    ) -> bytes:
        self.calls.append((address, method))
        fault = self._fault(address, method)
        if fault is not None and fault.hold is not None:
            await fault.hold.wait()
        if fault is not None and fault.drop == "request":
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"injected: request to {method} lost")
        h = self._handler(address, method)
        req = h.request_deserializer(data)
        try:
            resp = await asyncio.wait_for(h.unary_unary(req, _Context()), deadline_s)
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller was cancelled
            # the server's side died mid-call (a crash): the caller sees a lost connection
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"connection to {address} lost") from None
        if fault is not None and fault.drop == "reply":
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"injected: reply of {method} lost")
        out: bytes = h.response_serializer(resp)
        return out

    async def stream(self, address: str, method: str, data: bytes) -> AsyncIterator[bytes]:
        self.calls.append((address, method))
        fault = self._fault(address, method)
        if fault is not None and fault.drop:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"injected: {method} lost")
        h = self._handler(address, method)
        async for resp in h.unary_stream(h.request_deserializer(data), _Context()):
            yield h.response_serializer(resp)


class _Unary:
    def __init__(self, net: InProcessNetwork, address: str, method: str, ser: Any, de: Any):
        self.net, self.address, self.method, self.ser, self.de = net, address, method, ser, de

    # the generated stubs' calling convention (timeout=...)
    async def __call__(self, request: Any, timeout: float | None = None, **_: Any) -> Any:  # noqa: ASYNC109
        data = await self.net.unary(self.address, self.method, self.ser(request), timeout)
        return self.de(data)


class _Stream:
    def __init__(self, net: InProcessNetwork, address: str, method: str, ser: Any, de: Any):
        self.net, self.address, self.method, self.ser, self.de = net, address, method, ser, de

    def __call__(self, request: Any, timeout: float | None = None, **_: Any) -> Any:
        async def gen() -> AsyncIterator[Any]:
            async for data in self.net.stream(self.address, self.method, self.ser(request)):
                yield self.de(data)

        return gen()


class _NoBidi:
    def __init__(self, method: str, address: str) -> None:
        self.method, self.address = method, address

    async def initial_metadata(self) -> Any:
        raise rpc_error(
            grpc.StatusCode.UNIMPLEMENTED, f"{self.method} not served at {self.address}"
        )

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


class _Channel:
    """Enough of ``grpc.aio.Channel`` for the generated stubs."""

    def __init__(self, net: InProcessNetwork, address: str) -> None:
        self.net = net
        self.address = address

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> _Unary:
        return _Unary(self.net, self.address, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> _Stream:
        return _Stream(self.net, self.address, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, *_: Any, **__: Any) -> Callable[[], _NoBidi]:
        """Bidi streams (peer links, Identity/Calls) are not carried in process: their
        callers see UNIMPLEMENTED and call unary, as with a server that lacks them."""
        return lambda *_, **__: _NoBidi(method, self.address)

    async def close(self, grace: float | None = None) -> None:
        del grace
