"""An async client of the public Identity API that signs every request.

Used by the ``beco`` CLI, the integration tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beco_node import auth, keys, model
from beco_node.clock import now_ms

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
    ) -> None:
        """TLS is on when any of ``tls_ca`` (trusted CAs; default the system's), ``tls_cert``
        + ``tls_key`` (a client certificate, for mutual TLS) or ``tls_server_name`` (the
        name to check the server's certificate against, e.g. through a port-forward to
        127.0.0.1) is given."""
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
        self.channel = channel
        self.stub = pb_grpc.IdentityStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, name: str, request: Any) -> Any:
        model.canonicalise_names(request)
        auth.sign_request(M + name, request, self.key, now_ms())
        return await getattr(self.stub, name)(request, timeout=self.timeout)

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
