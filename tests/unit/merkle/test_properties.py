"""Property tests: the efficient tree agrees with a literal RFC 9162 implementation, and every
proof for every tree size up to 70 verifies while tampered ones do not."""

from __future__ import annotations

import hashlib

import pytest
from beco_node.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from beco_node.merkle.hashing import largest_power_of_two_below

MAX = 70


def _mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 section 2.1.1 writes it (over leaf hashes)."""
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = largest_power_of_two_below(len(d))
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = largest_power_of_two_below(len(d))
    if m < k:
        return [*_path(m, d[:k]), _mth(d[k:])]
    return [*_path(m - k, d[k:]), _mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


LEAVES = [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(MAX)]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    return MerkleTree(LEAVES)


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_roots_match_reference(tree: MerkleTree) -> None:
    for n in range(MAX + 1):
        assert tree.root(n) == _mth(LEAVES[:n]), n


def test_every_inclusion_proof_verifies(tree: MerkleTree) -> None:
    for n in range(1, MAX + 1):
        root = tree.root(n)
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            assert proof == _path(m, LEAVES[:n]), (m, n)
            verify_inclusion(LEAVES[m], m, n, proof, root)
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = _flip(bad[i])
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[m], m, n, bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(LEAVES[m], m, n, proof, _flip(root))
            with pytest.raises(ProofError):
                verify_inclusion(_flip(LEAVES[m]), m, n, proof, root)
            if n > 1:
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[m], (m + 1) % n, n, proof, root)


def test_every_consistency_proof_verifies(tree: MerkleTree) -> None:
    roots = [tree.root(n) for n in range(MAX + 1)]
    for n in range(1, MAX + 1):
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            if 0 < m < n:
                assert proof == _subproof(m, LEAVES[:n], True), (m, n)
            else:
                assert proof == []
            verify_consistency(m, n, roots[m], roots[n], proof)
            if 0 < m < n:
                for i in range(len(proof)):
                    bad = list(proof)
                    bad[i] = _flip(bad[i])
                    with pytest.raises(ProofError):
                        verify_consistency(m, n, roots[m], roots[n], bad)
                with pytest.raises(ProofError):
                    verify_consistency(m, n, _flip(roots[m]), roots[n], proof)
                with pytest.raises(ProofError):
                    verify_consistency(m, n, roots[m], _flip(roots[n]), proof)
                with pytest.raises(ProofError):
                    verify_consistency(m, n, roots[m], roots[n], proof[:-1])


def test_append_returns_index_and_truncate_restores() -> None:
    t = MerkleTree()
    for i, lh in enumerate(LEAVES[:37]):
        assert t.append(lh) == i
        assert t.leaf(i) == lh
    root37 = t.root()
    for lh in LEAVES[37:]:
        t.append(lh)
    t.truncate(37)
    assert t.size == 37
    assert t.root() == root37
    t.append(LEAVES[37])
    assert t.root() == _mth(LEAVES[:38])
    t.truncate(0)
    assert t.root() == EMPTY_ROOT


def test_out_of_range_requests_raise_value_error(tree: MerkleTree) -> None:
    for call in [
        lambda: tree.root(MAX + 1),
        lambda: tree.root(-1),
        lambda: tree.inclusion_proof(5, 5),
        lambda: tree.inclusion_proof(-1, 5),
        lambda: tree.inclusion_proof(0, MAX + 1),
        lambda: tree.consistency_proof(6, 5),
        lambda: tree.consistency_proof(1, MAX + 1),
        lambda: tree.leaf(MAX),
        lambda: tree.append(b"short"),
    ]:
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("size", [127, 128, 129, 1000, 1025])
def test_larger_trees_match_reference(size: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    t = MerkleTree(leaves)
    root = t.root()
    assert root == _mth(leaves)
    for m in {0, 1, size // 3, size // 2, size - 2, size - 1}:
        proof = t.inclusion_proof(m, size)
        assert proof == _path(m, leaves)
        verify_inclusion(leaves[m], m, size, proof, root)
    for old in {1, 2, size // 3, size // 2, size - 1}:
        proof = t.consistency_proof(old, size)
        assert proof == _subproof(old, leaves, True)
        verify_consistency(old, size, t.root(old), root, proof)
