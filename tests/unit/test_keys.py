import pytest
from beco_node import auth, keys
from beco_node.errors import Unauthenticated

P = 2**255 - 19
# Small-order and non-canonical encodings (libsodium's blocklist, and the sign-bit variants).
WEAK = [
    bytes(32),
    (1).to_bytes(32, "little"),
    (P - 1).to_bytes(32, "little"),
    P.to_bytes(32, "little"),
    (P + 1).to_bytes(32, "little"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    bytes(31) + b"\x80",
]


@pytest.mark.parametrize("raw", WEAK)
def test_small_order_and_non_canonical_keys_are_weak(raw: bytes) -> None:
    assert keys.is_weak_public_key(raw)


def test_real_keys_are_not_weak() -> None:
    for _ in range(200):
        assert not keys.is_weak_public_key(keys.public_key_bytes(keys.generate_private_key()))


def test_all_zero_key_forges_nothing() -> None:
    # With the all-zero key, about one random signature in four would verify.
    assert not any(keys.verify(bytes(32), bytes(64), bytes([i]) * 10) for i in range(256))


def test_peer_id_and_pem_round_trip() -> None:
    k = keys.generate_private_key()
    again = keys.private_key_from_pem(keys.private_key_to_pem(k))
    pub = keys.public_key_bytes(again)
    assert keys.peer_id(pub) == keys.peer_id(keys.public_key_bytes(k))
    sig = k.sign(b"m")
    assert keys.verify(pub, sig, b"m") and not keys.verify(pub, sig, b"n")


class _Auth:
    def __init__(self, ts: int) -> None:
        self.timestamp_ms = ts


class _Req:
    def __init__(self, ts: int) -> None:
        self.auth = _Auth(ts)


def test_request_must_be_sequenced_soon_after_signing() -> None:
    auth.check_sequenced_in_time(_Req(1_000_000), 1_029_000, 30_000)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="sequenced"):
        auth.check_sequenced_in_time(_Req(1_000_000), 1_031_000, 30_000)  # type: ignore[arg-type]


def test_libsodium_signatures_are_the_same_bytes_and_verify() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for _ in range(5):
        k = Ed25519PrivateKey.generate()
        msg = b"message" * 7
        sig = keys.sign(k, msg)
        assert sig == k.sign(msg)  # Ed25519 is deterministic: one signature per (key, message)
        pub = keys.public_key_bytes(k)
        assert keys.verify(pub, sig, msg)
        assert keys.verify(pub, sig, msg)  # the second time from the cache of verified ones
        assert not keys.verify(pub, sig, msg + b"!")
        bad = bytes([sig[0] ^ 1]) + sig[1:]
        assert not keys.verify(pub, bad, msg)
        assert not keys.verify(pub, bad, msg)  # failures are never cached as successes
