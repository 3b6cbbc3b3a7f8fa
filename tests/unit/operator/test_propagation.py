"""The membership gate's decision table (issue 8, item 8): commits keep flowing while a new
membership reaches every pod, in both directions of a quorum change."""

from __future__ import annotations

from datetime import timedelta

import pytest
from beco_operator import propagation
from beco_operator.propagation import PodGeneration

from .conftest import NOW

AT = (NOW - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
BEFORE = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
AFTER = (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pods(*loaded: int | None, created: str = BEFORE) -> list[PodGeneration]:
    return [PodGeneration(f"p{i}", created, g) for i, g in enumerate(loaded)]


@pytest.mark.parametrize(
    ("loaded", "created", "wait", "settled", "pending"),
    [
        ((3, 3, 3), BEFORE, 120, True, ()),  # every pod reports the generation
        ((3, 2, 3), BEFORE, 120, False, ("p1",)),  # one lags: keep waiting
        ((3, 2, 3), BEFORE, 5, True, ("p1",)),  # bounded: proceed after the wait, say so
        ((None, 3, 3), BEFORE, 120, False, ("p0",)),  # unreadable: the fallback wait
        ((None, None, None), BEFORE, 5, True, ()),  # unreadable, wait over
        ((None, None, None), AFTER, 120, True, ()),  # created after publication: have it
        ((4, 4, 4), BEFORE, 120, True, ()),  # already newer
    ],
)
def test_propagation(
    loaded: tuple[int | None, ...],
    created: str,
    wait: float,
    settled: bool,
    pending: tuple[str, ...],
) -> None:
    got = propagation.propagation(3, AT, pods(*loaded, created=created), NOW, wait)
    assert (got.settled, got.pending) == (settled, pending), got.message
    assert bool(got.message) == (not settled or bool(pending))


def test_unreadable_pods_are_named_in_the_status_message() -> None:
    got = propagation.propagation(3, AT, pods(None, 3), NOW, 120)
    assert "cannot read" in got.message and "p0" in got.message and "110s left" in got.message


def test_first_membership_needs_no_propagation() -> None:
    assert propagation.propagation(0, AT, pods(None), NOW, 120).settled
    assert propagation.propagation(1, AT, pods(None, 0), NOW, 120).settled


def test_publication_time_moves_only_with_the_text() -> None:
    assert propagation.published_at("a", "a", AT, NOW) == AT
    assert propagation.published_at("a", "b", AT, NOW) == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert propagation.published_at(None, "a", "", NOW) == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


SIX = [f"u{i}" for i in range(6)]
THREE = SIX[:3]


@pytest.mark.parametrize(
    ("old", "old_q", "new", "new_q", "ready", "ok"),
    [
        (None, 0, THREE, 2, [], True),  # a new network
        (SIX, 4, THREE, 2, SIX, True),  # scale-down: the kept three make 2
        (SIX, 4, THREE, 2, ["u0", "u3", "u4", "u5"], False),  # only one kept is ready: hold
        (THREE, 2, SIX, 4, THREE, True),  # scale-up: three ready + three starting with it
        (THREE, 2, THREE, 3, ["u0", "u1"], False),  # quorum up beyond the ready nodes: hold
        (THREE, 2, THREE, 3, THREE, True),  # quorum up, everyone ready
        (THREE, 3, THREE, 2, ["u0"], True),  # quorum down: always reachable or no worse
        (THREE, 2, THREE, 3, ["u0"], True),  # quorum lost already: publishing costs nothing
    ],
)
def test_may_publish(
    old: list[str] | None, old_q: int, new: list[str], new_q: int, ready: list[str], ok: bool
) -> None:
    got, why = propagation.may_publish(old, old_q, new, new_q, ready)
    assert got is ok
    assert bool(why) is (not ok)


def test_departing_members_stay_until_settled() -> None:
    zones = ["a", "b", "c"]
    live = {"a": 2, "b": 2, "c": 2}
    assert propagation.user_replicas(1, live, zones, settled=False) == live
    assert propagation.user_replicas(1, live, zones, settled=True) == {"a": 1, "b": 1, "c": 1}
    assert propagation.user_replicas(2, {"a": 1}, zones, settled=False) == {
        "a": 2,
        "b": 2,
        "c": 2,
    }
