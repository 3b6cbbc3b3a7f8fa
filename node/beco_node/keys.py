"""Ed25519 keys: generation, (de)serialisation and peer IDs.

One format everywhere: a private key is PKCS#8 PEM (the Secret key ``node.key``
the operator writes, the file ``--key-file`` the node reads); a public key is its
32 raw bytes, base64-encoded in the membership file. A peer ID is derived from
the public key alone, so nobody can claim an ID without holding its key.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
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


def peer_id(public_key: bytes) -> str:
    """A peer's ID: hex of the first 16 bytes of SHA-256 over its raw public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise KeyError_(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:16].hex()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature over ``message``."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True
