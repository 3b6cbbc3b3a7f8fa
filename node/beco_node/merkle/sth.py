"""Signed tree heads: the SST's Ed25519 signature over (tree size, timestamp, root).

The signed bytes are a fixed-length, domain-separated encoding (59 bytes)::

    b"beco-sth-v1"          11 bytes, ASCII, the domain tag and format version
    tree_size               8 bytes, unsigned big-endian
    timestamp_ms            8 bytes, unsigned big-endian, milliseconds since the Unix epoch
    root_hash               32 bytes

The tag keeps a tree-head signature from ever being valid for any other message
the same key signs, and the fixed layout leaves no room for ambiguity. A client
that holds the SST's public key (the membership file lists it) verifies a tree
head with ``verify_tree_head`` and can then trust proofs checked against it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from beco_node import keys
from beco_node.merkle.hashing import HASH_SIZE
from beco_node.merkle.verify import ProofError

STH_DOMAIN = b"beco-sth-v1"
SIGNATURE_SIZE = 64
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head as the SST signed it."""

    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signature: bytes


def tree_head_signing_bytes(tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    """The exact bytes the SST signs for a tree head (see module docstring)."""
    if not 0 <= tree_size <= _U64_MAX:
        raise ValueError(f"tree size {tree_size} does not fit an unsigned 64-bit integer")
    if not 0 <= timestamp_ms <= _U64_MAX:
        raise ValueError(f"timestamp {timestamp_ms} does not fit an unsigned 64-bit integer")
    if len(root_hash) != HASH_SIZE:
        raise ValueError(f"a root hash has {HASH_SIZE} bytes, got {len(root_hash)}")
    return STH_DOMAIN + struct.pack(">QQ", tree_size, timestamp_ms) + root_hash


def sign_tree_head(
    private_key: Ed25519PrivateKey, tree_size: int, root_hash: bytes, timestamp_ms: int
) -> SignedTreeHead:
    """Sign a tree head with the SST key."""
    message = tree_head_signing_bytes(tree_size, root_hash, timestamp_ms)
    return SignedTreeHead(
        tree_size, bytes(root_hash), timestamp_ms, keys.sign(private_key, message)
    )


def verify_tree_head(public_key_raw: bytes, sth: SignedTreeHead) -> None:
    """Raise ``ProofError`` unless ``sth`` carries a valid signature by ``public_key_raw``."""
    if len(public_key_raw) != 32:
        raise ProofError(f"an Ed25519 public key has 32 bytes, got {len(public_key_raw)}")
    if len(sth.signature) != SIGNATURE_SIZE:
        raise ProofError(
            f"a tree head signature has {SIGNATURE_SIZE} bytes, got {len(sth.signature)}"
        )
    try:
        message = tree_head_signing_bytes(sth.tree_size, sth.root_hash, sth.timestamp_ms)
    except ValueError as exc:
        raise ProofError(f"malformed tree head: {exc}") from exc
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(sth.signature, message)
    except InvalidSignature as exc:
        raise ProofError("tree head signature does not verify") from exc
