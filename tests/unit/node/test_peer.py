import pytest
from beco.v1 import peer_pb2 as ppb
from beco_node import keys, membership, peer
from beco_node.errors import BecoError, PermissionDenied, Unauthenticated

NOW = 1_700_000_000_000


@pytest.fixture
def net():
    ks = {}
    members = []
    for i, (name, role) in enumerate(
        [
            ("r", "rendezvous"),
            ("v", "validator"),
            ("s", "sst"),
            ("u0", "user"),
            ("u1", "user"),
            ("u2", "user"),
        ]
    ):
        k = keys.generate_private_key()
        ks[name] = k
        members.append(
            membership.make_member(
                name, role, "a", f"127.0.0.1:{9000 + i}", keys.public_key_bytes(k)
            )
        )
    ms = membership.build("t", 1, 2, members)
    return ms, ks


def pid(k) -> str:
    return keys.peer_id(keys.public_key_bytes(k))


def test_envelope_roundtrip_and_role_check(net) -> None:
    ms, ks = net
    env = peer.seal("propose", b"payload", ks["u0"], pid(ks["u0"]), NOW)
    assert peer.open_envelope(env, "propose", ms, NOW).name == "u0"
    env = peer.seal("propose", b"payload", ks["v"], pid(ks["v"]), NOW)
    with pytest.raises(PermissionDenied, match="may not send"):
        peer.open_envelope(env, "propose", ms, NOW)


def test_envelope_from_non_member_or_tampered_is_refused(net) -> None:
    ms, ks = net
    stranger = keys.generate_private_key()
    with pytest.raises(PermissionDenied, match="not in the membership"):
        peer.open_envelope(
            peer.seal("propose", b"x", stranger, pid(stranger), NOW), "propose", ms, NOW
        )
    env = peer.seal("propose", b"x", ks["u0"], pid(ks["u0"]), NOW)
    env.payload = b"y"
    with pytest.raises(Unauthenticated):
        peer.open_envelope(env, "propose", ms, NOW)
    # a key claiming a member's id
    env = peer.seal("propose", b"x", stranger, pid(ks["u1"]), NOW)
    with pytest.raises(Unauthenticated):
        peer.open_envelope(env, "propose", ms, NOW)
    old = peer.seal("propose", b"x", ks["u0"], pid(ks["u0"]), NOW - 3_600_000)
    with pytest.raises(Unauthenticated, match="timestamp"):
        peer.open_envelope(old, "propose", ms, NOW)


def header(seq: int = 1) -> ppb.ProposalHeader:
    return ppb.ProposalHeader(
        proposal=ppb.Proposal(
            proposal_id="p", user_id="u" * 32, kind="k", method="m", request=b"r"
        ),
        sequence=seq,
        validator_ts_ms=NOW,
    )


def vote(ks, name, h, verdict=ppb.VERDICT_VALID):
    return peer.sign_vote(peer.header_digest(h), verdict, "", "", ks[name], pid(ks[name]))


def test_quorum_certificate_accepts_quorum(net) -> None:
    ms, ks = net
    h = header()
    qc = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), vote(ks, "u2", h)])
    assert sorted(peer.verify_quorum_certificate(qc, ms, 1)) == sorted(
        [pid(ks["u0"]), pid(ks["u2"])]
    )


def test_quorum_certificate_rejections(net) -> None:
    ms, ks = net
    h = header()
    one = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h)])
    with pytest.raises(PermissionDenied, match="quorum is 2"):
        peer.verify_quorum_certificate(one, ms, 1)
    dup = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), vote(ks, "u0", h)])
    with pytest.raises(PermissionDenied, match="two votes"):
        peer.verify_quorum_certificate(dup, ms, 1)
    other = header(2)
    mixed = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), vote(ks, "u1", other)])
    with pytest.raises(PermissionDenied, match="another proposal"):
        peer.verify_quorum_certificate(mixed, ms, 1)
    nonuser = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), vote(ks, "v", h)])
    with pytest.raises(PermissionDenied, match="not a user node"):
        peer.verify_quorum_certificate(nonuser, ms, 1)
    invalid = ppb.QuorumCertificate(
        header=h, votes=[vote(ks, "u0", h), vote(ks, "u1", h, ppb.VERDICT_INVALID)]
    )
    with pytest.raises(PermissionDenied):
        peer.verify_quorum_certificate(invalid, ms, 1)
    forged = vote(ks, "u1", h)
    forged.verdict = ppb.VERDICT_VALID
    forged.reason = "changed"
    with pytest.raises(Unauthenticated):
        peer.verify_quorum_certificate(
            ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), forged]), ms, 1
        )
    ok = ppb.QuorumCertificate(header=h, votes=[vote(ks, "u0", h), vote(ks, "u1", h)])
    with pytest.raises(BecoError, match="wrong sequence"):
        peer.verify_quorum_certificate(ok, ms, 2)
