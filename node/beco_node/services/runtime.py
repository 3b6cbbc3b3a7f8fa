"""What every node shares: its key, the live membership, peer channels, the gRPC server.

- The membership file is polled (``--membership-poll-ms``) and swapped atomically
  when its contents change and validate; a bad file is logged and ignored, the
  old membership stays in force. Peers removed from it are refused at once.
- One persistent channel per peer address, reused by every call.
- Every handler goes through :func:`rpc_handler`: metrics, and ``BecoError`` ->
  gRPC status with the message. Unexpected errors are logged and become INTERNAL
  without details. Every status a node returns carries the trailer
  ``beco-origin: node``, so a client can tell it from a failed connection.
- Readiness: one grpc.health.v1 servicer, shared by the main server and the plaintext
  ``--health-listen`` server. Service ``""`` (and each role service) is SERVING only
  while no readiness condition is pending (started, a member of the current
  membership, plus each role's own: users loaded, PostgreSQL connected, SST reachable);
  service ``liveness`` is SERVING while the event loop answers.
- A peer's address is the membership's (the operator's word); the rendezvous records
  only tell who is alive. A node advertises ``--advertise`` or its membership address,
  never a wildcard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from beco.v1 import peer_pb2, peer_pb2_grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from beco_node import keys, membership, metrics, peer
from beco_node.calls import CLIENT_CALLS, LinkChannel, Links
from beco_node.clock import Clock
from beco_node.errors import BecoError
from beco_node.membership import Member, Membership
from beco_node.origin import ORIGIN_TRAILER
from beco_node.services.link import LinkServer
from beco_node.services.malformed import DecodeGuard
from beco_node.settings import LIVENESS_SERVICE, Settings, is_wildcard

log = logging.getLogger("beco.runtime")
T = TypeVar("T")
CLIENT_MAX_RECEIVE = 64 * 1024 * 1024
# Exceptions of lower layers that map to a status (the SST registers its store's errors).
ERROR_CODES: dict[type[BaseException], str] = {}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
        counted: dict[str, Any] = {}  # code -> its counter child: labels() costs per call

        def count(code: str) -> None:
            child = counted.get(code)
            if child is None:
                child = counted[code] = metrics.RPC_REQUESTS.labels(label, code)
            child.inc()

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
                await context.abort(getattr(grpc.StatusCode, exc.code), exc.message, ORIGIN_TRAILER)
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
                    await context.abort(getattr(grpc.StatusCode, mapped), str(exc), ORIGIN_TRAILER)
                code = "INTERNAL"
                log.exception("unexpected error in %s", label)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error", ORIGIN_TRAILER)
                raise
            finally:
                latency.observe(time.perf_counter() - t0)
                count(code)

        return wrapper

    return deco


def _bind(
    server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials | None, flag: str
) -> int:
    """Add a port; a failure is an OSError that names the address (gRPC raises RuntimeError)."""
    try:
        if creds is not None:
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen} ({flag}): {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {listen} ({flag})")
    return port


class Runtime:
    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        transport: Callable[[str], grpc.aio.Channel] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or Clock()
        # address -> channel; None: real gRPC channels (tests pass an in-process one)
        self.transport = transport
        self.key = keys.private_key_from_pem(Path(settings.key_file).read_bytes())
        self.public_key = keys.public_key_bytes(self.key)
        self.peer_id = keys.peer_id(self.public_key)
        self._membership_text = ""
        self.membership = self._load_membership()
        # readiness condition -> why this node cannot serve yet (empty: ready)
        self._not_ready: dict[str, str] = {"started": "this node is starting"}
        me = self.membership.by_peer_id(self.peer_id)
        if me is not None and me.role != settings.role:
            raise membership.MembershipError(
                f"the membership says this node is a {me.role}, not a {settings.role}"
            )
        if me is None:
            # A new pod may start before its membership reaches it: with --listen it serves
            # NOT_SERVING and waits to be added, instead of crash-looping.
            problem = f"this node's key (peer {self.peer_id}) is not in the membership"
            if not settings.listen:
                raise membership.MembershipError(
                    f"{problem} (with --listen it would start and wait to be added)"
                )
            log.warning("%s: waiting to be added, not serving meanwhile", problem)
            me = Member(
                f"{settings.role}-{self.peer_id[:8]}",
                settings.role,
                "",
                settings.advertise,
                self.public_key,
                self.peer_id,
            )
            self._not_ready["member"] = self._not_member(self.membership, me.name)
        self.me: Member = me
        if self.is_member and is_wildcard(self.advertise):
            raise membership.MembershipError(self._wildcard_problem())
        # peer id -> address a live peer registered with the rendezvous (not used to dial:
        # the membership's address wins, see address_of)
        self.discovered: dict[str, str] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Peer links (services.link): off with --peer-links off, and on the in-process
        # transport (the test kit's faults hit its unary calls).
        self.links: Links | None = None
        if transport is None and settings.peer_links == "on":
            self.links = Links(self.channel, settings.max_message_bytes)
        self._peer_channels: dict[str, LinkChannel] = {}
        self.link_server = LinkServer(CLIENT_MAX_RECEIVE)
        self.call_server = LinkServer(CLIENT_MAX_RECEIVE, CLIENT_CALLS)  # Identity/Calls
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_membership_change: list[Callable[[Membership], None]] = []
        self.health = health_aio.HealthServicer()
        self.service_names: list[str] = []
        self._health_server: grpc.aio.Server | None = None

    @property
    def advertise(self) -> str:
        """The address registered with the rendezvous: --advertise, else the membership's."""
        return self.settings.advertise or self.me.address

    # ---- readiness ----
    def set_ready(self, condition: str, reason: str | None) -> None:
        """Mark ``condition`` met (``reason`` None) or pending with the reason it is not."""
        before = self.not_ready_reason()
        if reason is None:
            self._not_ready.pop(condition, None)
        else:
            self._not_ready[condition] = reason
        after = self.not_ready_reason()
        if after != before:
            if after is None:
                log.info("ready", extra={"fields": {"role": self.settings.role}})
            else:
                log.info("not ready: %s", after, extra={"fields": {"condition": condition}})
            self.spawn(self.publish_health())

    def not_ready_reason(self) -> str | None:
        """Why this node cannot serve now (the first pending condition), or None."""
        return next(iter(self._not_ready.values()), None)

    async def publish_health(self) -> None:
        """Write the current readiness to the health servicer (idempotent, latest state)."""
        status = SERVING if self.not_ready_reason() is None else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    def gated(
        self,
        service: ServiceDescriptor,
        target: Callable[[], object | None],
        blocked: Callable[[], str | None] | None = None,
        label_prefix: str = "",
    ) -> Any:
        """A servicer for ``service`` that forwards to ``target()`` while ``blocked()`` is None,
        and answers UNAVAILABLE with the reason otherwise (or while there is no target yet).
        Refusals are counted under the same method labels as ``rpc_handler``'s."""
        why = blocked or self.not_ready_reason
        methods: dict[str, Any] = {}
        for m in service.methods:

            async def refuse(
                context: grpc.aio.ServicerContext[Any, Any],
                reason: str,
                _label: str = label_prefix + m.name,
            ) -> None:
                metrics.RPC_REQUESTS.labels(_label, "UNAVAILABLE").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, reason, ORIGIN_TRAILER)

            if m.client_streaming and m.server_streaming:  # Identity/Calls

                async def bidi(requests: Any, context: Any, _name: str = m.name) -> None:
                    reason, impl = why(), target()
                    if reason is not None or impl is None:
                        await refuse(context, reason or "this node is starting")
                    await getattr(impl, _name)(requests, context)

                methods[m.name] = bidi
            elif m.server_streaming:

                async def stream(request: Any, context: Any, _name: str = m.name) -> Any:
                    reason, impl = why(), target()
                    if reason is not None or impl is None:
                        await refuse(context, reason or "this node is starting")
                        return
                    async for item in getattr(impl, _name)(request, context):
                        yield item

                methods[m.name] = stream
            else:

                async def unary(request: Any, context: Any, _name: str = m.name) -> Any:
                    reason, impl = why(), target()
                    if reason is not None or impl is None:
                        await refuse(context, reason or "this node is starting")
                    return await getattr(impl, _name)(request, context)

                methods[m.name] = unary
        return types.SimpleNamespace(**methods)

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
            self._check_member(ms)
            if self.links is not None:
                await self.links.retain({self.address_of(m) for m in ms.members})
            for cb in self.on_membership_change:
                cb(ms)

    @property
    def is_member(self) -> bool:
        return "member" not in self._not_ready

    def _not_member(self, ms: Membership, name: str) -> str:
        return (
            f"this node ({name}) is not a {self.settings.role} of network {ms.network!r} at"
            f" membership generation {ms.generation}: it does not serve the network's data"
        )

    def _wildcard_problem(self) -> str:
        return (
            f"this node would advertise {self.advertise!r}, a wildcard address other nodes"
            " cannot reach: fix its membership address or pass --advertise HOST:PORT"
        )

    def _check_member(self, ms: Membership) -> None:
        me = ms.by_peer_id(self.peer_id)
        if me is None or me.role != self.settings.role:
            self.set_ready("member", self._not_member(ms, self.me.name))
            return
        self.me = me
        if is_wildcard(self.advertise):
            log.error("%s", self._wildcard_problem())
            self.set_ready("member", self._wildcard_problem())
            return
        self.set_ready("member", None)

    # ---- peers ----
    def address_of(self, member: Member) -> str:
        # The membership's address, always: a record at the rendezvous is a peer's own word
        # and must not redirect traffic (a node behind a wildcard listen once called itself).
        return member.address

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None and self.transport is not None:
            ch = self._channels[address] = self.transport(address)
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
        """The channel every peer stub uses: the one place choosing a link or a unary call
        (``services.link``)."""
        address = self.address_of(member)
        if self.links is None:
            return self.channel(address)
        ch = self._peer_channels.get(address)
        if ch is None:
            ch = self._peer_channels[address] = LinkChannel(
                self.links, address, self.channel(address)
            )
        return ch  # type: ignore[return-value]

    def add_servicer(
        self, add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
    ) -> None:
        """Register ``servicer`` with ``add`` (a generated ``add_*Servicer_to_server``) on
        ``server`` and on the stream servers, so a call on a stream runs the same handler."""
        add(servicer, server)
        add(servicer, self.link_server)
        add(servicer, self.call_server)

    def drain_streams(self) -> None:
        """Stopping: the peer links and client call streams answer what is in flight, end."""
        self.link_server.drain()
        self.call_server.drain()

    def _client_credentials(self) -> grpc.ChannelCredentials | None:
        s = self.settings
        if not s.tls_ca:
            return None
        ca = Path(s.tls_ca).read_bytes()
        key = Path(s.tls_key).read_bytes() if s.tls_key else None
        cert = Path(s.tls_cert).read_bytes() if s.tls_cert else None
        return grpc.ssl_channel_credentials(ca, key, cert)

    def spawn(self, coro: Awaitable[Any]) -> None:
        self.start(coro)

    def start(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the runtime owns: it outlives the RPC that started it
        (a caller's cancellation does not stop it), and its failure is logged."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (BecoError, grpc.aio.AioRpcError)):
                log.error("background task failed", exc_info=exc)

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    # ---- server ----
    def make_server(self) -> grpc.aio.Server:
        return grpc.aio.server(
            interceptors=[DecodeGuard(ORIGIN_TRAILER)],
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

    def _add_health(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

    async def serve_health(self) -> int | None:
        """Start the plaintext health-only server of ``--health-listen`` (None when 'off')."""
        listen = self.settings.health_listen
        if not listen or listen == "off":
            return None
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._add_health(server)
        port = _bind(server, listen, None, "--health-listen")
        await server.start()
        self._health_server = server
        log.info("health probes (plaintext)", extra={"fields": {"health_listen": listen}})
        return port

    async def serve(self, server: grpc.aio.Server, service_names: list[str]) -> None:
        if self.settings.peer_links == "on":
            # a coroutine that writes with context.write, which the generated type omits
            link_servicer: Any = self.link_server
            peer_pb2_grpc.add_PeerLinkServicer_to_server(link_servicer, server)
            service_names = [
                *service_names,
                peer_pb2.DESCRIPTOR.services_by_name["PeerLink"].full_name,
            ]
        self.service_names = list(service_names)
        self._add_health(server)
        names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        listen = self.settings.listen or self.me.address
        creds = self._server_credentials()
        _bind(server, listen, creds, "--listen")
        await self.publish_health()  # NOT_SERVING until every condition is met
        await self.health.set(LIVENESS_SERVICE, SERVING)
        await server.start()
        await self.serve_health()
        log.info(
            "serving",
            extra={
                "fields": {
                    "role": self.settings.role,
                    "listen": listen,
                    "advertise": self.advertise,
                    "peer_id": self.peer_id,
                }
            },
        )
        self.set_ready("started", None)

    async def watch_ready(self, role: str, condition: str) -> None:
        """Keep ``condition`` pending while the ``role`` peer does not report SERVING."""
        while True:
            m = self.membership.one(role)
            stub = health_pb2_grpc.HealthStub(self.peer_channel(m))
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                problem = "" if r.status == SERVING else "not ready"
            except grpc.aio.AioRpcError as exc:
                problem = exc.code().name
            if problem:
                self.set_ready(condition, f"the {role} ({m.address}) is unreachable: {problem}")
            else:
                self.set_ready(condition, None)
            await asyncio.sleep(self.settings.membership_poll_ms / 1000)

    async def close(self) -> None:
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        for t in list(self._tasks):
            t.cancel()
        if self.links is not None:
            await self.links.close()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close(None)
