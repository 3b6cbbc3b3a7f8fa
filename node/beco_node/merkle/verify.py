"""Offline verification of inclusion and consistency proofs (RFC 9162 sections 2.1.3.2, 2.1.4.2).

A client needs nothing but a tree head it trusts (checked with
``sth.verify_tree_head``), the proof and the leaf: these functions recompute the
root(s) from the proof and compare. They trust no other input: sizes, indexes and
hash lengths are all checked, and every failure raises ``ProofError`` saying why.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from beco_node.merkle.hashing import EMPTY_ROOT, HASH_SIZE, node_hash


class ProofError(ValueError):
    """A proof, root or tree head that does not verify; the message says why."""


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_proof(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` implies for leaf ``index`` of a tree of ``size`` leaves."""
    if size < 1 or not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not inside a tree of size {size}")
    _check_hash("leaf hash", leaf_hash)
    _check_proof(proof)
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:  # skip levels where our node has no right sibling
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows leaf ``index`` of a ``size``-leaf tree under ``root``."""
    _check_hash("root", root)
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if not hmac.compare_digest(computed, root):
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows the old tree is a prefix of the new one."""
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    _check_proof(proof)
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"old size {old_size} must be between 0 and new size {new_size}")
    if old_size == 0:
        # The empty tree is a prefix of every tree; its root is fixed.
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ProofError("the root of the empty tree is SHA-256 of the empty string")
        return
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError("equal tree sizes with different roots")
        return
    if not proof:
        raise ProofError("consistency proof is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree of the new one
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not hmac.compare_digest(fr, old_root):
        raise ProofError("consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise ProofError("consistency proof does not lead to the new root")
