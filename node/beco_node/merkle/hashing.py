"""RFC 6962 / RFC 9162 section 2.1.1 hashing with SHA-256.

Leaves and interior nodes are hashed with distinct one-byte prefixes (0x00 and
0x01) so that a leaf can never be passed off as an interior node (second
preimage resistance). The root of the empty tree is the hash of the empty string.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two strictly smaller than ``n`` (n > 1)."""
    if n < 2:
        raise ValueError(f"n must be > 1, got {n}")
    return 1 << ((n - 1).bit_length() - 1)
