"""Quorum arithmetic for the user-node vote.

Pure functions, shared by the nodes and the operator, so both always agree on
the number of valid votes a commit needs.

The default tolerates the most Byzantine user nodes for a given membership:
``f = floor((n - 1) / 3)`` faulty nodes, and ``q = ceil((n + f + 1) / 2)`` votes,
the smallest size for which any two quorums intersect in at least ``f + 1``
nodes, hence in at least one honest node.
"""

from __future__ import annotations


class QuorumError(ValueError):
    """A quorum that cannot work for the given membership."""


def max_faulty(n: int) -> int:
    """The number of Byzantine user nodes ``n`` nodes tolerate: floor((n-1)/3)."""
    if n < 1:
        raise QuorumError(f"a network needs at least one user node, got {n}")
    return (n - 1) // 3


def default_quorum(n: int) -> int:
    """The smallest quorum that tolerates the most Byzantine nodes among ``n``."""
    f = max_faulty(n)
    return -(-(n + f + 1) // 2)  # ceil without floats


def check_quorum(n: int, q: int) -> None:
    """Raise :class:`QuorumError` unless ``q`` is a usable quorum among ``n`` voters.

    A quorum must be a strict majority (two quorums then always overlap, so two
    conflicting updates can never both commit) and must be reachable (``q <= n``).
    """
    if n < 1:
        raise QuorumError(f"a network needs at least one user node, got {n}")
    if q > n:
        raise QuorumError(f"quorum {q} is unreachable with {n} user nodes")
    if 2 * q <= n:
        raise QuorumError(f"quorum {q} is not a majority of {n} user nodes (needs > {n // 2})")


def resolve_quorum(n: int, requested: int | str | None) -> int:
    """The quorum to use: ``requested`` when it is an integer, else the default."""
    if requested is None or requested == "auto":
        return default_quorum(n)
    if isinstance(requested, str):
        try:
            value = int(requested)
        except ValueError:
            raise QuorumError(f"quorum must be 'auto' or an integer, got {requested!r}") from None
    else:
        value = requested
    check_quorum(n, value)
    return value


def can_still_reach(quorum: int, valid: int, pending: int) -> bool:
    """Whether ``quorum`` valid votes are still possible with ``pending`` voters left."""
    return valid + pending >= quorum
