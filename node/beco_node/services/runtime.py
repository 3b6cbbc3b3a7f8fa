"""What every node shares: its key, the live membership, peer channels, the gRPC server.

- The membership file is polled (``--membership-poll-ms``) and swapped atomically
  when its contents change and validate; a bad file is logged and ignored, the
  old membership stays in force. Peers removed from it are refused at once.
- One persistent channel per peer address, reused by every call.
- Every handler goes through :func:`rpc_handler`: metrics, and ``BecoError`` ->
  gRPC status with the message. Unexpected errors are logged and become INTERNAL
  without details.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from beco_node import keys, membership, metrics, peer
from beco_node.clock import now_ms
from beco_node.errors import BecoError
from beco_node.membership import Member, Membership
from beco_node.services.malformed import DecodeGuard
from beco_node.settings import Settings

log = logging.getLogger("beco.runtime")
T = TypeVar("T")
CLIENT_MAX_RECEIVE = 64 * 1024 * 1024
# Exceptions of lower layers that map to a status (the SST registers its store's errors).
ERROR_CODES: dict[type[BaseException], str] = {}


def _record_membership(ms: Membership) -> None:
    """Export the loaded membership's generation, quorum and user-node count (load and reload)."""
    metrics.MEMBERSHIP_GENERATION.set(ms.generation)
    metrics.MEMBERSHIP_QUORUM.set(ms.quorum)
    metrics.MEMBERSHIP_USER_NODES.set(len(ms.user_nodes))


def _observe_peer_clock(name: str, offset_ms: int) -> None:
    metrics.PEER_CLOCK_OFFSET.labels(name).set(offset_ms / 1000)


if _observe_peer_clock not in peer.CLOCK_OFFSET_OBSERVERS:
    peer.CLOCK_OFFSET_OBSERVERS.append(_observe_peer_clock)


def rpc_handler(
    label: str,
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Wrap a servicer method: metrics and error mapping."""

    def deco(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        latency = metrics.RPC_LATENCY.labels(label)

        @functools.wraps(fn)
        async def wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> T:
            t0 = time.perf_counter()
            code = "OK"
            try:
                return await fn(self, request, context)
            except BecoError as exc:
                code = exc.code
                await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
                raise  # unreachable: abort raises
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                mapped = next((c for t, c in ERROR_CODES.items() if isinstance(exc, t)), None)
                if mapped is not None:
                    code = mapped
                    await context.abort(getattr(grpc.StatusCode, mapped), str(exc))
                code = "INTERNAL"
                log.exception("unexpected error in %s", label)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                raise
            finally:
                latency.observe(time.perf_counter() - t0)
                metrics.RPC_REQUESTS.labels(label, code).inc()

        return wrapper

    return deco


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = keys.private_key_from_pem(Path(settings.key_file).read_bytes())
        self.public_key = keys.public_key_bytes(self.key)
        self.peer_id = keys.peer_id(self.public_key)
        self._membership_text = ""
        self.membership = self._load_membership()
        me = self.membership.by_peer_id(self.peer_id)
        if me is None:
            raise membership.MembershipError(
                f"this node's key (peer {self.peer_id}) is not in the membership"
            )
        if me.role != settings.role:
            raise membership.MembershipError(
                f"the membership says this node is a {me.role}, not a {settings.role}"
            )
        self.me: Member = me
        self.discovered: dict[str, str] = {}  # peer id -> address learnt from the rendezvous
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_membership_change: list[Callable[[Membership], None]] = []

    # ---- membership ----
    def _load_membership(self) -> Membership:
        text = Path(self.settings.membership).read_text()
        ms = membership.loads(text)
        self._membership_text = text
        _record_membership(ms)
        return ms

    async def watch_membership(self) -> None:
        path = Path(self.settings.membership)
        while True:
            await asyncio.sleep(self.settings.membership_poll_ms / 1000)
            try:
                text = await asyncio.to_thread(path.read_text)
            except OSError as exc:
                log.warning("cannot read the membership file: %s", exc)
                continue
            if text == self._membership_text:
                continue
            try:
                ms = membership.loads(text)
            except membership.MembershipError as exc:
                log.error("ignoring an invalid membership file: %s", exc)
                self._membership_text = text
                continue
            self._membership_text = text
            self.membership = ms
            _record_membership(ms)
            log.info(
                "membership reloaded",
                extra={"fields": {"generation": ms.generation, "members": len(ms.members)}},
            )
            for cb in self.on_membership_change:
                cb(ms)

    # ---- peers ----
    def address_of(self, member: Member) -> str:
        return self.discovered.get(member.peer_id) or member.address

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            opts = [
                ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.enable_retries", 0),
                # A restarted peer is back within a second or two, not after minutes of backoff.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            creds = self._client_credentials()
            if creds is None:
                ch = grpc.aio.insecure_channel(address, options=opts)
            else:
                ch = grpc.aio.secure_channel(address, creds, options=opts)
            self._channels[address] = ch
        return ch

    def peer_channel(self, member: Member) -> grpc.aio.Channel:
        return self.channel(self.address_of(member))

    def _client_credentials(self) -> grpc.ChannelCredentials | None:
        s = self.settings
        if not s.tls_ca:
            return None
        ca = Path(s.tls_ca).read_bytes()
        key = Path(s.tls_key).read_bytes() if s.tls_key else None
        cert = Path(s.tls_cert).read_bytes() if s.tls_cert else None
        return grpc.ssl_channel_credentials(ca, key, cert)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def now_ms(self) -> int:
        return now_ms()

    # ---- server ----
    def make_server(self) -> grpc.aio.Server:
        return grpc.aio.server(
            interceptors=[DecodeGuard()],
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", CLIENT_MAX_RECEIVE),
                ("grpc.so_reuseport", 0),
            ],
        )

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if not (s.tls_cert and s.tls_key):
            return None
        return grpc.ssl_server_credentials(
            [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())],
            root_certificates=Path(s.tls_ca).read_bytes() if s.tls_ca else None,
            require_client_auth=bool(s.tls_ca),
        )

    async def serve(self, server: grpc.aio.Server, service_names: list[str]) -> None:
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        listen = self.settings.listen or self.me.address
        creds = self._server_credentials()
        if creds is not None:
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        for name in ["", *service_names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "fields": {"role": self.settings.role, "listen": listen, "peer_id": self.peer_id}
            },
        )

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close(None)
