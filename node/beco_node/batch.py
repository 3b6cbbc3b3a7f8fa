"""Batches of proposals: one vote signature per voter covers every change of a batch.

The validator sequences the proposals that arrive while a round is in flight into one
batch. A batch's root is the RFC 9162 Merkle root over the header digests
(``peer.header_digest``) of its changes, in batch order. A voter still checks every
change on its own (client signature, permissions, sequence), then signs once::

    b"beco-batch-vote-v1\\0" || root (32) || n (4, BE)
      || n x [ index (4, BE) || len(code) (2, BE) || code || len(reason) (4, BE) || reason ]

where the n entries are the changes it rejects (INVALID, with the status and reason), in
increasing index order; every other change of the batch it votes VALID. So each change
keeps a compact certificate: its header, the batch root, its inclusion path in the batch
(``inclusion_path``) and a quorum of batch votes whose rejections do not name its index
(``check_change``).

Pure (no I/O).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from beco_node.merkle import MerkleTree, leaf_hash
from beco_node.merkle.verify import ProofError, root_from_inclusion_proof

BATCH_VOTE_DOMAIN = b"beco-batch-vote-v1\x00"
DIGEST_SIZE = 32
# A batch holds at most this many changes (and one per user: the validator runs one
# proposal per user at a time); the validator also caps a batch's bytes (see validator).
MAX_BATCH = 256


@dataclass(frozen=True)
class Rejection:
    index: int
    code: str
    reason: str


def root(digests: Sequence[bytes]) -> bytes:
    """The batch root over the changes' header digests (a batch is never empty)."""
    if not digests:
        raise ValueError("a batch holds at least one change")
    tree = MerkleTree()
    for d in digests:
        if len(d) != DIGEST_SIZE:
            raise ValueError(f"a header digest has {DIGEST_SIZE} bytes, got {len(d)}")
        tree.append(leaf_hash(d))
    return tree.root()


def inclusion_path(digests: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of change ``index`` to the batch root."""
    tree = MerkleTree(leaf_hash(d) for d in digests)
    return tree.inclusion_proof(index, tree.size)


def in_batch(
    digest: bytes, index: int, size: int, path: Sequence[bytes], batch_root: bytes
) -> bool:
    """Whether ``path`` proves the header digest ``digest`` is change ``index`` of the batch."""
    try:
        got = root_from_inclusion_proof(leaf_hash(digest), index, size, path)
    except ProofError:
        return False
    return hmac.compare_digest(got, batch_root)


def vote_signing_bytes(batch_root: bytes, rejected: Iterable[Rejection]) -> bytes:
    """What a voter signs for a batch (see the module docstring); rejections sorted by
    index, each index at most once (a ValueError otherwise: an ambiguous vote)."""
    if len(batch_root) != DIGEST_SIZE:
        raise ValueError(f"a batch root has {DIGEST_SIZE} bytes, got {len(batch_root)}")
    rej = list(rejected)
    parts = [BATCH_VOTE_DOMAIN, batch_root, struct.pack(">I", len(rej))]
    last = -1
    for r in rej:
        if r.index <= last:
            raise ValueError("rejections must name distinct indexes in increasing order")
        last = r.index
        code, reason = r.code.encode(), r.reason.encode()
        parts += [
            struct.pack(">IH", r.index, len(code)),
            code,
            struct.pack(">I", len(reason)),
            reason,
        ]
    return b"".join(parts)


def valid_voters(votes: Iterable[tuple[str, frozenset[int]]], index: int) -> list[str]:
    """The voters (peer id, rejected indexes) whose batch vote is VALID for change ``index``."""
    return [voter for voter, rejected in votes if index not in rejected]


def check_change(
    digest: bytes,
    index: int,
    size: int,
    path: Sequence[bytes],
    batch_root: bytes,
    votes: Iterable[tuple[str, frozenset[int]]],
    quorum: int,
) -> list[str]:
    """A change's compact certificate, once each vote's signature over ``batch_root`` has
    been checked: the change is in the batch and a quorum of distinct voters did not reject
    it. Returns those voters; raises ValueError saying what is missing."""
    if not in_batch(digest, index, size, path, batch_root):
        raise ValueError(f"change {index} is not in the batch its votes sign")
    vs = list(votes)
    ids = [v for v, _ in vs]
    if len(ids) != len(set(ids)):
        raise ValueError("two votes from one voter")
    ok = valid_voters(vs, index)
    if len(ok) < quorum:
        raise ValueError(f"{len(ok)} valid votes for change {index}, the quorum is {quorum}")
    return ok
