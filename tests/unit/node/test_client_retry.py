"""The client's write retries over the in-process transport: an indeterminate answer is
followed by the same signed request, never a new one; definitive answers are final."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco_node import keys
from beco_node.client import Client, proposal_id
from beco_node.testkit import InProcessNetwork

ADDR = "127.0.0.1:7001"


class Flaky(pb_grpc.IdentityServicer):
    """Answers UpdateFirstName with the scripted codes, then commits."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        self.codes = codes
        self.seen: list[bytes] = []

    async def UpdateFirstName(self, request: Any, context: Any) -> pb.MutationResponse:
        self.seen.append(request.auth.signature)
        if self.codes:
            await context.abort(self.codes.pop(0), "scripted")
        return pb.MutationResponse(commit=pb.CommitInfo(proposal_id=proposal_id(request)))


def client(net: InProcessNetwork) -> Client:
    return Client(ADDR, keys.generate_private_key(), channel=net.channel(ADDR), retry_for=20)


async def test_indeterminate_answers_resend_the_same_signed_request() -> None:
    net = InProcessNetwork()
    svc = Flaky([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
    net.serve(ADDR, [(pb_grpc.add_IdentityServicer_to_server, svc)])
    c = client(net)
    r = await c.set_first("u", "A")
    assert len(svc.seen) == 3 and len(set(svc.seen)) == 1  # one signed request, sent 3 times
    assert r.commit.proposal_id == hashlib.sha256(svc.seen[0]).hexdigest()
    assert c.resends == 2


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL]
)
async def test_definitive_answers_are_not_retried(code: grpc.StatusCode) -> None:
    net = InProcessNetwork()
    svc = Flaky([code])
    net.serve(ADDR, [(pb_grpc.add_IdentityServicer_to_server, svc)])
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await client(net).set_first("u", "A")
    assert ei.value.code() == code and len(svc.seen) == 1


async def test_a_request_that_never_left_is_not_retried() -> None:
    net = InProcessNetwork()  # nothing serves ADDR: the connection fails
    c = client(net)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await c.set_first("u", "A")
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and c.resends == 0
