"""An in-memory RFC 9162 Merkle tree over leaf hashes, with roots and proofs for any past size.

Layout: ``_levels[h][i]`` is the hash of the complete, aligned subtree of ``2**h``
leaves starting at leaf ``i * 2**h``. Appending a leaf adds it to level 0 and then,
while the newest node at a level is a right child, its parent one level up, so
appends cost O(1) hashes amortised and the tree keeps about ``2n`` hashes (about
13 MB for 100,000 leaves).

RFC 9162 splits a range of ``n`` leaves at ``k``, the largest power of two below
``n``. Starting from offset 0, the left half of every such split is a complete
aligned subtree, which is a single lookup in ``_levels``; only the ragged right
edge is hashed on demand. So a root of any past size costs O(log n) hashes and a
proof O(log^2 n) at worst, which keeps proofs well under a millisecond at 100k+
leaves without storing anything per tree size.

The proof functions follow the recursive definitions PATH (section 2.1.3.1) and
SUBPROOF (section 2.1.4.1) of RFC 9162 literally, on index ranges instead of
copied lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from beco_node.merkle.hashing import (
    EMPTY_ROOT,
    HASH_SIZE,
    largest_power_of_two_below,
    node_hash,
)


class MerkleTree:
    """An append-only Merkle tree over 32-byte leaf hashes (see module docstring)."""

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return self.size

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash (not the leaf data); returns its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, got {len(leaf_hash)}")
        levels = self._levels
        index = len(levels[0])
        levels[0].append(bytes(leaf_hash))
        h, i = 0, index
        while i & 1:  # the node just added is a right child: its parent is now complete
            level = levels[h]
            parent = node_hash(level[i - 1], level[i])
            h += 1
            if h == len(levels):
                levels.append([])
            levels[h].append(parent)
            i >>= 1
        return index

    def truncate(self, size: int) -> None:
        """Drop every leaf at index >= ``size`` (used to undo an append that was not stored)."""
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot truncate a tree of size {self.size} to {size}")
        for h, level in enumerate(self._levels):
            del level[size >> h :]
        while len(self._levels) > 1 and not self._levels[-1]:
            self._levels.pop()

    def leaf(self, index: int) -> bytes:
        """The hash of leaf ``index``."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} out of range for tree size {self.size}")
        return self._levels[0][index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all of them)."""
        n = self.size if size is None else size
        self._check_size(n)
        if n == 0:
            return EMPTY_ROOT
        return self._subtree(0, n)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} out of range for tree size {size}")
        proof: list[bytes] = []
        self._path(index, 0, size, proof)
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of that of ``new_size``.

        Empty when ``old_size`` is 0 or equal to ``new_size`` (nothing to prove).
        """
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} must be between 0 and new size {new_size}")
        proof: list[bytes] = []
        if 0 < old_size < new_size:
            self._subproof(old_size, 0, new_size, True, proof)
        return proof

    # -- internals -------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} out of range: the tree has {self.size} leaves")

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); ``start`` is always aligned to the split that produced it."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            h = n.bit_length() - 1
            return self._levels[h][start >> h]
        k = largest_power_of_two_below(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def _path(self, m: int, start: int, end: int, out: list[bytes]) -> None:
        """PATH(m, D[start:end]) appended to ``out``, leaf side first."""
        n = end - start
        if n == 1:
            return
        k = largest_power_of_two_below(n)
        if m < k:
            self._path(m, start, start + k, out)
            out.append(self._subtree(start + k, end))
        else:
            self._path(m - k, start + k, end, out)
            out.append(self._subtree(start, start + k))

    def _subproof(self, m: int, start: int, end: int, whole: bool, out: list[bytes]) -> None:
        """SUBPROOF(m, D[start:end], b) appended to ``out``."""
        n = end - start
        if m == n:
            if not whole:
                out.append(self._subtree(start, end))
            return
        k = largest_power_of_two_below(n)
        if m <= k:
            self._subproof(m, start, start + k, whole, out)
            out.append(self._subtree(start + k, end))
        else:
            self._subproof(m - k, start + k, end, False, out)
            out.append(self._subtree(start, start + k))
