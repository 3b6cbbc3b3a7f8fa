import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, keys
from beco_node.errors import Unauthenticated

M = "/beco.v1.Identity/UpdateFirstName"
NOW = 1_700_000_000_000


def signed(key, now=NOW, nonce=None, method=M):
    req = pb.UpdateFirstNameRequest(user_id="ab" * 16, first_name="Ada")
    auth.sign_request(method, req, key, now, nonce)
    return req


def test_good_request_names_its_caller() -> None:
    key = keys.generate_private_key()
    a = auth.Authenticator()
    assert a.authenticate(M, signed(key), NOW + 10) == keys.peer_id(keys.public_key_bytes(key))


def test_tampered_body_is_rejected() -> None:
    req = signed(keys.generate_private_key())
    req.first_name = "Eve"
    with pytest.raises(Unauthenticated, match="bad request signature"):
        auth.Authenticator().authenticate(M, req, NOW)


def test_signature_of_another_key_is_rejected() -> None:
    req = signed(keys.generate_private_key())
    req.auth.public_key = keys.public_key_bytes(keys.generate_private_key())
    with pytest.raises(Unauthenticated):
        auth.Authenticator().authenticate(M, req, NOW)


def test_signature_is_bound_to_the_method() -> None:
    req = signed(keys.generate_private_key(), method="/beco.v1.Identity/UpdateLastName")
    with pytest.raises(Unauthenticated):
        auth.Authenticator().authenticate(M, req, NOW)


def test_missing_auth_is_rejected() -> None:
    with pytest.raises(Unauthenticated, match="no auth"):
        auth.Authenticator().authenticate(M, pb.UpdateFirstNameRequest(), NOW)


@pytest.mark.parametrize("offset", [30_001, -30_001, 3_600_000])
def test_stale_or_future_timestamp_is_rejected(offset: int) -> None:
    req = signed(keys.generate_private_key(), now=NOW + offset)
    with pytest.raises(Unauthenticated, match="timestamp"):
        auth.Authenticator(skew_ms=30_000).authenticate(M, req, NOW)


def test_timestamp_within_skew_is_accepted() -> None:
    req = signed(keys.generate_private_key(), now=NOW - 29_000)
    auth.Authenticator(skew_ms=30_000).authenticate(M, req, NOW)


def test_replay_is_rejected_and_fresh_nonce_accepted() -> None:
    key = keys.generate_private_key()
    a = auth.Authenticator()
    req = signed(key)
    a.authenticate(M, req, NOW)
    with pytest.raises(Unauthenticated, match="replayed"):
        a.authenticate(M, req, NOW + 1)
    a.authenticate(M, signed(key), NOW + 2)


def test_forged_request_does_not_burn_the_nonce() -> None:
    key = keys.generate_private_key()
    a = auth.Authenticator()
    good = signed(key, nonce=b"n" * 16)
    forged = pb.UpdateFirstNameRequest()
    forged.CopyFrom(good)
    forged.auth.signature = bytes(64)
    with pytest.raises(Unauthenticated):
        a.authenticate(M, forged, NOW)
    a.authenticate(M, good, NOW)


def test_replay_cache_forgets_after_the_window() -> None:
    c = auth.ReplayCache(window_ms=1000)
    assert c.check_and_add(b"k", 0)
    assert not c.check_and_add(b"k", 999)
    assert c.check_and_add(b"k", 1000)
    assert len(c) == 1


def test_short_nonce_is_rejected() -> None:
    req = signed(keys.generate_private_key(), nonce=b"short")
    with pytest.raises(Unauthenticated, match="nonce"):
        auth.Authenticator().authenticate(M, req, NOW)


def test_admission_tells_a_resend_from_a_replay() -> None:
    key = keys.generate_private_key()
    a = auth.Authenticator(skew_ms=30_000)
    m = "/beco.v1.Identity/UpdateFirstName"
    req = pb.UpdateFirstNameRequest(user_id="u", first_name="A")
    auth.sign_request(m, req, key, 1_000_000)
    assert a.admit(m, req, 1_000_000)[1] is auth.Admission.FRESH
    assert a.admit(m, req, 1_000_500)[1] is auth.Admission.RESENT
    # same nonce, other content: a replay, refused
    other = pb.UpdateFirstNameRequest(user_id="u", first_name="B")
    auth.sign_request(m, other, key, 1_000_000, nonce=req.auth.nonce)
    with pytest.raises(Unauthenticated, match="replay"):
        a.admit(m, other, 1_000_600)
    assert a.admit(m, req, 1_031_000)[1] is auth.Admission.EXPIRED
    assert a.admit(m, req, 969_000)[1] is auth.Admission.EARLY
    # reads keep refusing any second use
    with pytest.raises(Unauthenticated, match="replay"):
        a.authenticate(m, req, 1_000_700)
