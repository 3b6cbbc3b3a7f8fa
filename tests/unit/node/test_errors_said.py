"""Errors name their real cause: the validator's clock, the peer that refused, the status."""

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, keys, membership, metrics, peer
from beco_node.errors import Unauthenticated, Unavailable
from beco_node.services import runtime  # noqa: F401 - registers the clock-offset gauge
from beco_node.services.relay import (
    PASSED_ON,
    PROPOSE_PASSED_ON,
    QUERY_PASSED_ON,
    code_of,
    relayed,
)

NOW = 1_700_000_000_000
SKEW = 30_000


def _signed_at(ts: int) -> pb.UpdateFirstNameRequest:
    req = pb.UpdateFirstNameRequest(user_id="a" * 32, first_name="A")
    auth.sign_request("/beco.v1.Identity/UpdateFirstName", req, keys.generate_private_key(), ts)
    return req


@pytest.mark.parametrize(
    ("client_off", "validator_off", "error"),
    [
        (0, 0, None),
        (0, 35_000, Unavailable),  # the validator's clock is 35 s fast
        (0, -40_000, Unavailable),
        (-10_000, 25_000, Unavailable),  # the client agrees with us: the validator is odd
        (-40_000, 0, Unauthenticated),  # a stale request: the client's (or replayer's) fault
    ],
)
def test_voter_blames_the_clock_that_is_off(
    client_off: int, validator_off: int, error: type[Exception] | None
) -> None:
    req = _signed_at(NOW + client_off)
    if error is None:
        auth.check_validator_clock(req, NOW + validator_off, NOW, SKEW)
        return
    with pytest.raises(error) as err:
        auth.check_validator_clock(req, NOW + validator_off, NOW, SKEW)
    if error is Unavailable:
        assert "validator clock skew" in str(err.value)


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why")


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_peer_statuses_pass_on_or_become_unavailable(code: grpc.StatusCode) -> None:
    if code == grpc.StatusCode.OK:
        return
    err = relayed(_rpc_error(code), "the SST")
    if code.name in PASSED_ON:
        assert err.code == code.name and "the SST" in err.message
    else:  # unreachable or failed inside: never UNKNOWN/INTERNAL to the caller
        assert err.code == "UNAVAILABLE" and code_of(_rpc_error(code)) == "UNAVAILABLE"


def test_the_usual_refusals_are_passed_on() -> None:
    for name in ("FAILED_PRECONDITION", "ALREADY_EXISTS", "PERMISSION_DENIED", "DEADLINE_EXCEEDED"):
        assert name in PASSED_ON


def test_a_refusal_of_this_nodes_envelope_is_not_the_clients_fault() -> None:
    for code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        for passed_on in (QUERY_PASSED_ON, PROPOSE_PASSED_ON):
            err = relayed(_rpc_error(code), "the validator", passed_on)
            assert err.code == "UNAVAILABLE" and code.name in err.message
    assert code_of(_rpc_error(grpc.StatusCode.NOT_FOUND), QUERY_PASSED_ON) == "NOT_FOUND"
    assert code_of(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), PROPOSE_PASSED_ON) == (
        "DEADLINE_EXCEEDED"
    )


def test_peer_clock_offset_is_exported() -> None:
    ks = {}
    members = []
    roles = [("r", "rendezvous"), ("v", "validator"), ("s", "sst"), ("u0", "user")]
    for i, (name, role) in enumerate(roles):
        ks[name] = keys.generate_private_key()
        pub = keys.public_key_bytes(ks[name])
        members.append(membership.make_member(name, role, "a", f"127.0.0.1:{9000 + i}", pub))
    ms = membership.build("t", 1, 1, members)
    sst = keys.peer_id(keys.public_key_bytes(ks["s"]))
    env = peer.seal("applied", b"x", ks["s"], sst, NOW + 1234)
    peer.open_envelope(env, "applied", ms, NOW)
    assert metrics.PEER_CLOCK_OFFSET.labels("s")._value.get() == pytest.approx(1.234)
    late = peer.seal("applied", b"x", ks["s"], sst, NOW - 90_000)
    with pytest.raises(Unauthenticated, match="clock skew between nodes"):
        peer.open_envelope(late, "applied", ms, NOW)


def test_an_unavailable_peer_that_answered_passes_its_reason_on() -> None:
    said = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("beco-origin", "node")),
        "waiting for PostgreSQL",
    )
    assert relayed(said, "the SST").message == "the SST is unavailable: waiting for PostgreSQL"
    transport = _rpc_error(grpc.StatusCode.UNAVAILABLE)  # no trailer: the connection failed
    assert relayed(transport, "the SST").message == "the SST is unavailable"


def test_every_unary_handler_maps_its_errors() -> None:
    """Every unary method a node serves goes through ``rpc_handler`` (its errors become the
    right status, never UNKNOWN, and it is counted under its own label), derived from the
    services: a decorator left on the wrong method fails here."""
    from beco.v1 import peer_pb2 as ppb
    from beco_node.services.rendezvous import RendezvousService
    from beco_node.services.sst import SstService
    from beco_node.services.user import IdentityService, VoterService
    from beco_node.services.validator import ValidatorService

    servicers = {
        pb.DESCRIPTOR.services_by_name["Identity"]: IdentityService,
        ppb.DESCRIPTOR.services_by_name["UserNode"]: VoterService,
        ppb.DESCRIPTOR.services_by_name["Validator"]: ValidatorService,
        ppb.DESCRIPTOR.services_by_name["Sst"]: SstService,
        ppb.DESCRIPTOR.services_by_name["Rendezvous"]: RendezvousService,
    }
    unwrapped = [
        f"{service.name}.{m.name}"
        for service, cls in servicers.items()
        for m in service.methods
        if not (m.client_streaming or m.server_streaming)
        and not hasattr(getattr(cls, m.name), "__wrapped__")
    ]
    assert unwrapped == []
