"""The verifiable log: RFC 6962 / RFC 9162 Merkle tree hashing, proofs and signed tree heads.

Pure code, no I/O: ``hashing`` (leaf and node hashes), ``tree`` (an in-memory tree
over leaf hashes that produces roots and proofs), ``verify`` (what a client runs
offline to check proofs against a root), ``sth`` (the SST-signed tree head and its
byte encoding). See docs/merkle-log.md for the formats.
"""

from beco_node.merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash
from beco_node.merkle.sth import (
    SignedTreeHead,
    sign_tree_head,
    tree_head_signing_bytes,
    verify_tree_head,
)
from beco_node.merkle.tree import MerkleTree
from beco_node.merkle.verify import (
    ProofError,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "ProofError",
    "SignedTreeHead",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "sign_tree_head",
    "tree_head_signing_bytes",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]
