"""Ed25519 keys: generation, (de)serialisation and peer IDs.

One format everywhere: a private key is PKCS#8 PEM (the Secret key ``node.key``
the operator writes, the file ``--key-file`` the node reads); a public key is its
32 raw bytes, base64-encoded in the membership file. A peer ID is derived from
the public key alone, so nobody can claim an ID without holding its key.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class KeyError_(ValueError):
    """A key that cannot be read."""


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_("not a PEM-encoded unencrypted private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_("the private key is not an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != PUBLIC_KEY_SIZE:
        raise KeyError_(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_to_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key_from_b64(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise KeyError_("public key is not valid base64") from exc
    public_key_from_bytes(raw)  # validates the length
    return raw


# Ed25519 curve: -x^2 + y^2 = 1 + d x^2 y^2 over GF(P).
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 section 5.1.3 decoding; None for a non-canonical or off-curve encoding."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(pt: tuple[int, int, int]) -> tuple[int, int, int]:
    """Projective doubling on the a = -1 twisted Edwards curve (no field inversion)."""
    x, y, z = pt
    a, b, c = x * x % _P, y * y % _P, 2 * z * z % _P
    e = ((x + y) * (x + y) - a - b) % _P
    g = (b - a) % _P
    f = (g - c) % _P
    h = (-a - b) % _P
    return e * f % _P, g * h % _P, f * g % _P


def is_weak_public_key(raw: bytes) -> bool:
    """Whether ``raw`` is unusable as an identity: not a canonical curve point, or a point
    of small order. With such a key, signatures that nobody made verify (an all-zero key
    accepts about one random signature in four), so no user may own one."""
    if len(raw) != PUBLIC_KEY_SIZE:
        return True
    pt = _decode_point(raw)
    if pt is None:
        return True
    q = (pt[0], pt[1], 1)
    for _ in range(3):  # [8]P is the identity exactly for the small-order points
        q = _double(q)
    return q[0] == 0 and q[1] == q[2]


def peer_id(public_key: bytes) -> str:
    """A peer's ID: hex of the first 16 bytes of SHA-256 over its raw public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise KeyError_(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:16].hex()


_WEAK_CACHE: set[bytes] = set()
_STRONG_CACHE: set[bytes] = set()
_CACHE_LIMIT = 200_000


def _is_weak_cached(public_key: bytes) -> bool:
    """:func:`is_weak_public_key`, computed once per key (the square root costs ~250 µs)."""
    if public_key in _STRONG_CACHE:
        return False
    if public_key in _WEAK_CACHE:
        return True
    weak = is_weak_public_key(public_key)
    cache = _WEAK_CACHE if weak else _STRONG_CACHE
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache.add(public_key)
    return weak


# key -> its libsodium secret key (seed || public key), derived once per key object.
_SODIUM_KEYS: dict[int, tuple[Ed25519PrivateKey, bytes]] = {}
_SODIUM_KEYS_LIMIT = 4096


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """``key``'s Ed25519 signature over ``message``, made by libsodium (PyNaCl): the same
    bytes as ``key.sign(message)`` (Ed25519 is deterministic), in about two thirds of the
    time here."""
    hit = _SODIUM_KEYS.get(id(key))
    if hit is None or hit[0] is not key:
        if len(_SODIUM_KEYS) >= _SODIUM_KEYS_LIMIT:
            _SODIUM_KEYS.clear()
        _, secret = nacl.bindings.crypto_sign_seed_keypair(key.private_bytes_raw())
        hit = _SODIUM_KEYS[id(key)] = (key, secret)
    signed: bytes = nacl.bindings.crypto_sign(message, hit[1])
    return signed[:SIGNATURE_SIZE]


# Signatures this process has already verified (a notice forwarded and delivered, a
# certificate re-sent): never verified twice. Keyed by the signature and a digest of key and
# message; only successes are remembered, and the oldest go first.
_VERIFIED: dict[bytes, None] = {}
_VERIFIED_LIMIT = 65_536


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature over ``message``.

    Verified with libsodium (PyNaCl), about twice as fast here as OpenSSL through
    ``cryptography`` (docs/benchmarks.md); libsodium also refuses non-canonical and
    small-order encodings, which no honest signer produces."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    seen = signature + hashlib.sha256(public_key + message).digest()
    if seen in _VERIFIED:
        return True
    if _is_weak_cached(public_key):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    if len(_VERIFIED) >= _VERIFIED_LIMIT:
        del _VERIFIED[next(iter(_VERIFIED))]
    _VERIFIED[seen] = None
    return True
