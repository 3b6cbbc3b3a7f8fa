"""An async client of the public Identity API that signs every request.

Used by the ``beco`` CLI, the integration tests and the benchmarks.

Writes are retried safely: an indeterminate answer (UNAVAILABLE, DEADLINE_EXCEEDED:
the write may or may not have committed) is followed by re-sending the *same* signed
request, which the network answers with that request's final outcome and never
applies twice (docs/reliability.md). Retries stop at the first definitive answer, or
after ``retry_for`` seconds (then the last indeterminate error is raised; its
proposal id, :func:`proposal_id`, can still be looked up with ``get_outcome``).

Reads go through a session by default (``sessions=True``): the first read opens one with a
signed ``OpenSession`` (``beco_node.session``), and every read then carries a MAC instead of
an Ed25519 signature. A session the node no longer knows (it restarted, evicted or expired
it) is re-opened and the read sent again, once; if that fails the same way (e.g. reads
balanced across nodes), or the node has no sessions (an older version), the read is signed.
Writes are always signed.

``multiplex=True`` sends the unary calls on one ``Identity/Calls`` stream to the node
(``beco_node.calls``): the same requests, checks and answers, for about a third of a unary
call's CPU on both ends; for clients with many calls in flight. Several ``Client`` objects
(e.g. one per user) can share one such stream: pass ``channel=multiplexed_channel(...)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beco_node import auth, calls, keys, limits, model, peer
from beco_node.clock import now_ms
from beco_node.session import REOPEN, RESEND, ClientSession, Opened, client_key, new_keypair

M = model.SERVICE
FIELDS = {
    "first": pb.FIELD_FIRST_NAME,
    "first_name": pb.FIELD_FIRST_NAME,
    "middle": pb.FIELD_MIDDLE_NAMES,
    "middle_names": pb.FIELD_MIDDLE_NAMES,
    "last": pb.FIELD_LAST_NAME,
    "last_name": pb.FIELD_LAST_NAME,
}
ACCESS = {"viewer": pb.ACCESS_VIEWER, "editor": pb.ACCESS_EDITOR}
# Answers that leave a write's outcome unknown: re-send the same signed request.
INDETERMINATE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Longer than the nodes' skew window (30 s by default): a re-send then always gets a
# definitive answer (the request can no longer commit, or it did). 45 s.
DEFAULT_RETRY_FOR_S = 1.5 * auth.DEFAULT_SKEW_MS / 1000


def proposal_id(request: Any) -> str:
    """The id of a signed write: known before it is sent (hex SHA-256 of its signature)."""
    return peer.proposal_id(request.auth.signature)


def _session_refused(exc: grpc.aio.AioRpcError, hint: str) -> bool:
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED and hint in (exc.details() or "")


def _never_sent(exc: grpc.aio.AioRpcError) -> bool:
    """The channel could not connect: the request never left this client."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (
        exc.details() or ""
    )


def multiplexed_channel(channel: grpc.aio.Channel, endpoint: str) -> grpc.aio.Channel:
    """``channel`` to the user node at ``endpoint``, its unary calls on one ``Identity/Calls``
    stream (closing it closes the stream). A request larger than the node's default
    ``--max-message-bytes`` goes unary, so the node refuses it alone, not the stream."""
    return calls.multiplexed(channel, endpoint, limits.MAX_MESSAGE_BYTES)  # type: ignore[return-value]


class Client:
    def __init__(
        self,
        endpoint: str,
        key: Ed25519PrivateKey,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 30.0,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls_server_name: str | None = None,
        retry_for: float = DEFAULT_RETRY_FOR_S,
        sessions: bool = True,
        multiplex: bool = False,
    ) -> None:
        """TLS is on when any of ``tls_ca`` (trusted CAs; default the system's), ``tls_cert``
        + ``tls_key`` (a client certificate, for mutual TLS) or ``tls_server_name`` (the
        name to check the server's certificate against, e.g. through a port-forward to
        127.0.0.1) is given. ``sessions``: reads through a session (module docstring);
        False signs every read. ``multiplex``: the calls on one stream (module docstring)."""
        self.key = key
        self.user_id = keys.peer_id(keys.public_key_bytes(key))
        self.endpoint = endpoint
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if channel is None:
            if tls_ca is not None or tls_cert is not None or tls_server_name:
                creds = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
                if tls_server_name:
                    opts.append(("grpc.ssl_target_name_override", tls_server_name))
                channel = grpc.aio.secure_channel(endpoint, creds, options=opts)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=opts)
        if multiplex:
            channel = multiplexed_channel(channel, endpoint)
        self.channel = channel
        self.stub = pb_grpc.IdentityStub(self.channel)
        self.timeout = timeout
        self.retry_for = retry_for
        self.resends = 0  # re-sent writes (after indeterminate answers), for callers' figures
        # The proposal id of the last write whose outcome stayed unknown (None: every write
        # sent got a final answer); GetOutcome / `beco outcome` resolves it.
        self.unresolved: str | None = None
        self.use_sessions = sessions
        self.session: ClientSession | None = None
        self.sessions_opened = 0  # for callers' figures and tests
        self._opening: asyncio.Lock | None = None

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, name: str, request: Any) -> Any:
        if self.use_sessions and M + name in model.SESSION_READS:
            return await self.session_read(name, request)
        model.canonicalise_names(request)
        auth.sign_request(M + name, request, self.key, now_ms())
        if M + name in model.MUTATIONS:
            return await self.send_write(name, request)
        return await getattr(self.stub, name)(request, timeout=self.timeout)

    async def open_session(self) -> ClientSession:
        """Open a read session on the node (a signed OpenSession; see beco_node.session)."""
        private, pub = new_keypair()
        req = pb.OpenSessionRequest(client_public_key=pub)
        auth.sign_request(model.OPEN_SESSION, req, self.key, now_ms())
        r: pb.OpenSessionResponse = await self.stub.OpenSession(req, timeout=self.timeout)
        opened = Opened(r.session_id, r.node_public_key, r.ttl_ms, r.window)
        key = client_key(private, pub, self.user_id, opened, req.auth.signature)
        self.sessions_opened += 1
        return ClientSession(r.session_id, key, r.ttl_ms, time.monotonic())

    async def _current_session(self) -> ClientSession | None:
        """The session to read with (opened once, shared by concurrent reads); None when
        the node has none (an older version: reads are signed from then on)."""
        s = self.session
        if s is not None and not s.ending(time.monotonic()):
            return s
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            s = self.session
            if s is not None and not s.ending(time.monotonic()):
                return s
            if not self.use_sessions:
                return None
            try:
                self.session = await self.open_session()
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.use_sessions = False
                self.session = None
            return self.session

    async def session_read(self, name: str, request: Any) -> Any:
        """A read with the session's MAC; re-open once if the node lost the session, and
        sign it if that does not help (module docstring)."""
        method = M + name
        send = getattr(self.stub, name)
        reopened = False
        for _ in range(3):
            s = await self._current_session()
            if s is None:
                break
            s.seal(method, request)
            try:
                return await send(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if _session_refused(exc, RESEND):
                    continue  # a counter the node saw as too old: a new one
                if not _session_refused(exc, REOPEN):
                    raise
                if self.session is not s:
                    continue  # another read re-opened it already
                if reopened:
                    break  # a fresh session was refused too: sign this read
                self.session = None
                reopened = True
        request.ClearField("session")
        auth.sign_request(method, request, self.key, now_ms())
        return await send(request, timeout=self.timeout)

    async def send_write(self, name: str, request: Any) -> Any:
        """Send a signed write; after an indeterminate answer re-send it unchanged (see the
        module docstring) until a definitive answer or ``retry_for`` seconds."""
        method = getattr(self.stub, name)
        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        reached = False  # whether any attempt may have reached a node
        while True:
            left = deadline - time.monotonic()
            try:
                return await method(request, timeout=max(1.0, min(self.timeout, left)))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in INDETERMINATE:
                    raise
                reached = reached or not _never_sent(exc)
                if not reached:
                    raise
                if time.monotonic() + delay >= deadline:
                    self.unresolved = proposal_id(request)
                    raise
            self.resends += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def get_outcome(self, proposal_id: str) -> pb.GetOutcomeResponse:
        """The final outcome of a write by its proposal id (committed, failed or unknown)."""
        r: pb.GetOutcomeResponse = await self.call(
            "GetOutcome", pb.GetOutcomeRequest(proposal_id=proposal_id)
        )
        return r

    async def create_user(
        self, first: str = "", middle: Sequence[str] = (), last: str = ""
    ) -> pb.MutationResponse:
        req = pb.CreateUserRequest(first_name=first, middle_names=list(middle), last_name=last)
        r: pb.MutationResponse = await self.call("CreateUser", req)
        return r

    async def get_user(self, user_id: str) -> pb.User:
        r: pb.User = await self.call("GetUser", pb.GetUserRequest(user_id=user_id))
        return r

    async def list_users(self, page_size: int = 0, page_token: str = "") -> pb.ListUsersResponse:
        req = pb.ListUsersRequest(page_size=page_size, page_token=page_token)
        r: pb.ListUsersResponse = await self.call("ListUsers", req)
        return r

    async def list_all_users(self, page_size: int = 0) -> pb.ListUsersResponse:
        """Every user visible to the caller, page after page."""
        out = pb.ListUsersResponse()
        token = ""
        while True:
            page = await self.list_users(page_size, token)
            out.users.extend(page.users)
            token = page.next_page_token
            if not token:
                return out

    async def set_first(self, user_id: str, value: str, expected: int = 0) -> pb.MutationResponse:
        req = pb.UpdateFirstNameRequest(
            user_id=user_id, first_name=value, expected_sequence=expected
        )
        r: pb.MutationResponse = await self.call("UpdateFirstName", req)
        return r

    async def set_middle(
        self, user_id: str, values: Sequence[str], expected: int = 0
    ) -> pb.MutationResponse:
        req = pb.UpdateMiddleNamesRequest(
            user_id=user_id, middle_names=list(values), expected_sequence=expected
        )
        r: pb.MutationResponse = await self.call("UpdateMiddleNames", req)
        return r

    async def set_last(self, user_id: str, value: str, expected: int = 0) -> pb.MutationResponse:
        req = pb.UpdateLastNameRequest(user_id=user_id, last_name=value, expected_sequence=expected)
        r: pb.MutationResponse = await self.call("UpdateLastName", req)
        return r

    async def grant(
        self, user_id: str, field: str, grantee: str, access: str
    ) -> pb.MutationResponse:
        req = pb.AccessRequest(
            user_id=user_id, field=FIELDS[field], grantee=grantee, access=ACCESS[access]
        )
        r: pb.MutationResponse = await self.call("GrantAccess", req)
        return r

    async def revoke(
        self, user_id: str, field: str, grantee: str, access: str
    ) -> pb.MutationResponse:
        req = pb.AccessRequest(
            user_id=user_id, field=FIELDS[field], grantee=grantee, access=ACCESS[access]
        )
        r: pb.MutationResponse = await self.call("RevokeAccess", req)
        return r

    async def history_page(
        self, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> pb.GetHistoryResponse:
        req = pb.GetHistoryRequest(user_id=user_id, page_size=page_size, page_token=page_token)
        r: pb.GetHistoryResponse = await self.call("GetHistory", req)
        return r

    async def history(self, user_id: str, page_size: int = 0) -> pb.GetHistoryResponse:
        """The whole history, page after page."""
        out = pb.GetHistoryResponse()
        token = ""
        while True:
            page = await self.history_page(user_id, page_size, token)
            out.entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return out

    async def tree_head(self) -> pb.TreeHead:
        r: pb.TreeHead = await self.call("GetTreeHead", pb.GetTreeHeadRequest())
        return r

    async def inclusion_proof(self, leaf_index: int, tree_size: int = 0) -> pb.InclusionProof:
        req = pb.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size)
        r: pb.InclusionProof = await self.call("GetInclusionProof", req)
        return r

    async def consistency_proof(self, old_size: int, new_size: int = 0) -> pb.ConsistencyProof:
        req = pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
        r: pb.ConsistencyProof = await self.call("GetConsistencyProof", req)
        return r
