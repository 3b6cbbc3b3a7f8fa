"""Signed tree heads: the fixed encoding, signing and verification."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from beco_node.keys import public_key_bytes
from beco_node.merkle import (
    EMPTY_ROOT,
    ProofError,
    sign_tree_head,
    tree_head_signing_bytes,
    verify_tree_head,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def test_encoding_is_fixed_and_documented() -> None:
    root = bytes(range(32))
    got = tree_head_signing_bytes(5, root, 1_700_000_000_123)
    assert got == b"beco-sth-v1" + struct.pack(">QQ", 5, 1_700_000_000_123) + root
    assert len(got) == 59


@pytest.mark.parametrize(
    ("size", "root", "ts"),
    [(-1, EMPTY_ROOT, 0), (0, b"x", 0), (0, EMPTY_ROOT, -5), (1 << 64, EMPTY_ROOT, 0)],
)
def test_encoding_rejects_bad_fields(size: int, root: bytes, ts: int) -> None:
    with pytest.raises(ValueError):
        tree_head_signing_bytes(size, root, ts)


def test_sign_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_bytes(key)
    sth = sign_tree_head(key, 3, EMPTY_ROOT, 42)
    verify_tree_head(pub, sth)
    for bad in [
        dataclasses.replace(sth, tree_size=4),
        dataclasses.replace(sth, timestamp_ms=43),
        dataclasses.replace(sth, root_hash=bytes(32)),
        dataclasses.replace(sth, signature=bytes(64)),
        dataclasses.replace(sth, signature=sth.signature[:10]),
    ]:
        with pytest.raises(ProofError):
            verify_tree_head(pub, bad)
    with pytest.raises(ProofError):
        verify_tree_head(public_key_bytes(Ed25519PrivateKey.generate()), sth)
