"""The Merkle code against published RFC 6962 / Certificate Transparency test vectors.

The DATA below (leaves, roots, proofs) is copied from transparency-dev/merkle, files
``proof/verify_test.go`` (variables ``leaves``, ``roots``, ``inclusionProofs``,
``consistencyProofs``; the same 8-leaf reference data as google/certificate-transparency)
and ``rfc6962/rfc6962_test.go`` (``TestRFC6962Hasher``). In ``inclusionProofs`` the leaf
number is 1-based; here it is converted to our 0-based index.
"""

from __future__ import annotations

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

h = bytes.fromhex

LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# ROOTS[i] is the root of the tree of the first i + 1 leaves.
ROOTS = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# (0-based leaf index, tree size, proof)
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    return MerkleTree(leaf_hash(d) for d in LEAVES)


def test_rfc6962_hasher() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_empty_tree_root() -> None:
    assert MerkleTree().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots(tree: MerkleTree, size: int) -> None:
    assert tree.root(size) == ROOTS[size - 1]
    # The same root when the tree holds exactly ``size`` leaves.
    assert MerkleTree(leaf_hash(d) for d in LEAVES[:size]).root() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs(tree: MerkleTree, index: int, size: int, proof: list[bytes]) -> None:
    assert tree.inclusion_proof(index, size) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs(tree: MerkleTree, old: int, new: int, proof: list[bytes]) -> None:
    assert tree.consistency_proof(old, new) == proof
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    """Corruptions after ``corruptInclusionProof`` in transparency-dev/merkle verify_test.go."""
    probes = [
        ("index - 1", index - 1, size, leaf, proof, root),
        ("index + 1", index + 1, size, leaf, proof, root),
        ("index ^ 2", index ^ 2, size, leaf, proof, root),
        ("size * 2", index, size * 2, leaf, proof, root),
        ("size // 2", index, size // 2, leaf, proof, root),
        ("wrong leaf", index, size, leaf_hash(b"WrongLeaf"), proof, root),
        ("empty root", index, size, leaf, proof, EMPTY_ROOT),
        ("random root", index, size, leaf, proof, SOME_HASH),
        ("trailing garbage", index, size, leaf, [*proof, b""], root),
        ("trailing root", index, size, leaf, [*proof, root], root),
        ("preceding garbage", index, size, leaf, [b"", *proof], root),
        ("preceding root", index, size, leaf, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((f"flipped bit in proof[{i}]", index, size, leaf, bad, root))
    if proof:
        probes.append(("removed component", index, size, leaf, proof[:-1], root))
    if len(proof) > 1:
        probes.append(
            ("inserted component", index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root)
        )
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_fail(index: int, size: int, proof: list[bytes]) -> None:
    leaf = leaf_hash(LEAVES[index])
    for desc, i, s, lh, p, r in _inclusion_probes(index, size, proof, ROOTS[size - 1], leaf):
        with pytest.raises(ProofError):
            verify_inclusion(lh, i, s, p, r)
            pytest.fail(f"verified a corrupted proof: {desc}")


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proofs_fail(old: int, new: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        ("old - 1", old - 1, new, r1, r2, proof),
        ("old + 1", old + 1, new, r1, r2, proof),
        ("old ^ 2", old ^ 2, new, r1, r2, proof),
        ("new * 2", old, new * 2, r1, r2, proof),
        ("new // 2", old, new // 2, r1, r2, proof),
        ("wrong root1", old, new, SOME_HASH, r2, proof),
        ("wrong root2", old, new, r1, SOME_HASH, proof),
        ("swapped roots", old, new, r2, r1, proof),
        ("empty proof", old, new, r1, r2, []),
        ("trailing garbage", old, new, r1, r2, [*proof, b""]),
        ("trailing root1", old, new, r1, r2, [*proof, r1]),
        ("trailing root2", old, new, r1, r2, [*proof, r2]),
        ("preceding garbage", old, new, r1, r2, [b"", *proof]),
        ("preceding root1", old, new, r1, r2, [r1, *proof]),
        ("preceding root2", old, new, r1, r2, [r2, *proof]),
        ("preceding proof[0]", old, new, r1, r2, [proof[0], *proof]),
        ("truncated proof", old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((f"flipped bit in proof[{i}]", old, new, r1, r2, bad))
    for desc, s1, s2, a, b, p in probes:
        with pytest.raises(ProofError):
            verify_consistency(s1, s2, a, b, p)
            pytest.fail(f"verified a corrupted proof: {desc}")


def test_single_entry_tree() -> None:
    # Root and leaf hash of a 1-entry tree are the same and the proof is empty.
    hh = leaf_hash(b"data")
    verify_inclusion(hh, 0, 1, [], hh)
    with pytest.raises(ProofError):
        verify_inclusion(hh, 0, 1, [], b"")
    with pytest.raises(ProofError):
        verify_inclusion(b"", 0, 1, [], hh)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1)])
def test_inclusion_outside_tree_fails(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    for args in [
        (1, 1, ROOTS[0], ROOTS[1], []),  # same size, different roots
        (1, 0, ROOTS[0], EMPTY_ROOT, []),  # time travel
        (2, 1, ROOTS[1], ROOTS[0], []),
        (1, 2, ROOTS[0], ROOTS[1], []),  # empty proof
        (0, 1, EMPTY_ROOT, ROOTS[0], [EMPTY_ROOT]),  # roots fine, proof not empty
        (1, 1, ROOTS[0], ROOTS[0], [EMPTY_ROOT]),
        (0, 1, ROOTS[0], ROOTS[0], []),  # the empty tree has a fixed root
    ]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
