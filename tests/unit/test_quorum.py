import pytest
from beco_node.quorum import QuorumError, check_quorum, default_quorum, max_faulty, resolve_quorum


@pytest.mark.parametrize(
    ("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5), (9, 6), (10, 7)]
)
def test_default_quorum(n: int, q: int) -> None:
    assert default_quorum(n) == q


@pytest.mark.parametrize("n", range(1, 60))
def test_two_default_quorums_share_an_honest_node(n: int) -> None:
    q, f = default_quorum(n), max_faulty(n)
    assert 2 * q - n >= f + 1
    assert q <= n - f  # still live with f nodes down


@pytest.mark.parametrize(("n", "q"), [(3, 1), (4, 2), (3, 4), (0, 0)])
def test_bad_quorum_rejected(n: int, q: int) -> None:
    with pytest.raises(QuorumError):
        check_quorum(n, q)


def test_resolve() -> None:
    assert resolve_quorum(6, "auto") == 4
    assert resolve_quorum(6, None) == 4
    assert resolve_quorum(6, 5) == 5
    assert resolve_quorum(6, "5") == 5
    with pytest.raises(QuorumError, match="integer"):
        resolve_quorum(6, "many")
    with pytest.raises(QuorumError, match="majority"):
        resolve_quorum(6, 3)
