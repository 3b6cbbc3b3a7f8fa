import pytest
from beco.v1 import peer_pb2 as ppb
from beco_node import batch, keys, membership, peer
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


def bvote(ks, name, digests, rejected=()):
    rej = [batch.Rejection(i, "PERMISSION_DENIED", "no") for i in rejected]
    return peer.sign_batch_vote(batch.root(digests), rej, ks[name], pid(ks[name]))


def cert(hs, indexes, votes):
    digests = [peer.header_digest(h) for h in hs]
    return ppb.BatchCertificate(
        digests=digests, indexes=indexes, headers=[hs[i] for i in indexes], votes=votes
    )


def test_batch_certificate_accepts_quorum_per_change(net) -> None:
    ms, ks = net
    hs = [header(1), header(2), header(3)]
    ds = [peer.header_digest(h) for h in hs]
    # u1 rejects change 1: it still has u0 and u2; change 2 is rejected by two voters
    votes = [bvote(ks, "u0", ds, [2]), bvote(ks, "u1", ds, [1, 2]), bvote(ks, "u2", ds)]
    out = peer.verify_batch_certificate(cert(hs, [0, 1, 2], votes), ms)
    assert out[0] == (hs[0], [pid(ks["u0"]), pid(ks["u1"]), pid(ks["u2"])])
    assert out[1] == (hs[1], [pid(ks["u0"]), pid(ks["u2"])])
    assert isinstance(out[2], PermissionDenied) and "quorum is 2" in out[2].message


def test_batch_certificate_rejections(net) -> None:
    ms, ks = net
    hs = [header(1), header(2)]
    ds = [peer.header_digest(h) for h in hs]
    dup = cert(hs, [0], [bvote(ks, "u0", ds), bvote(ks, "u0", ds)])
    with pytest.raises(PermissionDenied, match="two votes"):
        peer.verify_batch_certificate(dup, ms)
    # a voter that signed a different batch: refused (the validator drops such a vote)
    other = [peer.header_digest(header(7)), ds[1]]
    with pytest.raises(PermissionDenied, match="another batch"):
        peer.verify_batch_certificate(
            cert(hs, [0], [bvote(ks, "u0", ds), bvote(ks, "u1", other)]), ms
        )
    with pytest.raises(PermissionDenied, match="not a user node"):
        peer.verify_batch_certificate(cert(hs, [0], [bvote(ks, "u0", ds), bvote(ks, "v", ds)]), ms)
    forged = bvote(ks, "u1", ds, [0])
    del forged.rejected[:]  # turn a rejection into a VALID vote: the signature no longer holds
    with pytest.raises(Unauthenticated):
        peer.verify_batch_certificate(cert(hs, [0], [bvote(ks, "u0", ds), forged]), ms)
    # a header that is not the batch's change at that index: that change alone is refused
    swapped = cert(hs, [0, 1], [bvote(ks, "u0", ds), bvote(ks, "u1", ds)])
    swapped.headers[1].CopyFrom(header(9))
    out = peer.verify_batch_certificate(swapped, ms)
    assert out[0][0] == hs[0] and isinstance(out[1], PermissionDenied)
    with pytest.raises(BecoError, match="one index per header"):
        peer.verify_batch_certificate(ppb.BatchCertificate(digests=ds), ms)
