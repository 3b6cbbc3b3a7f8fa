from __future__ import annotations

from datetime import UTC, datetime

from beco_operator.rollout import SETTLE_SECONDS, PodView, decide, may_disrupt_one, outdated

MEMBERS = ["u-a-0", "u-b-0", "u-c-0"]


def pods(
    ready: dict[str, bool],
    hashes: dict[str, str] | None = None,
    terminating: set[str] | None = None,
) -> dict[str, PodView]:
    hashes = hashes or {}
    return {
        m: PodView(m, r, m in (terminating or set()), hashes.get(m, "old"), "2026-01-01T00:00:00Z")
        for m, r in ready.items()
    }


WANT = {m: "new" for m in MEMBERS}


def test_nothing_to_do_when_every_pod_is_current() -> None:
    d = decide(
        MEMBERS, pods(dict.fromkeys(MEMBERS, True), dict.fromkeys(MEMBERS, "new")), WANT, {}, 2
    )
    assert (d.delete, d.waiting, d.pending) == (None, False, 0)


def test_restarts_one_ready_pod_when_the_rest_keep_quorum() -> None:
    d = decide(MEMBERS, pods(dict.fromkeys(MEMBERS, True)), WANT, {}, 2)
    assert d.delete == "u-a-0" and d.pending == 3


def test_waits_while_another_pod_restarts() -> None:
    p = pods({"u-a-0": False, "u-b-0": True, "u-c-0": True}, {"u-a-0": "new"})
    d = decide(MEMBERS, p, WANT, {}, 2)
    assert d.delete is None and d.waiting and "u-a-0 is not ready" in d.reason


def test_waits_for_a_missing_pod() -> None:
    p = pods({"u-b-0": True, "u-c-0": True})
    d = decide(MEMBERS, p, WANT, {}, 2)
    assert d.delete is None and d.waiting and "no pod" in d.reason


def test_never_below_quorum() -> None:
    # q = n: no ready node may go down.
    d = decide(MEMBERS, pods(dict.fromkeys(MEMBERS, True)), WANT, {}, 3)
    assert d.delete is None and d.waiting and "quorum 3" in d.reason


def test_an_unready_outdated_pod_goes_first() -> None:
    p = pods({"u-a-0": True, "u-b-0": False, "u-c-0": True})
    d = decide(MEMBERS, p, WANT, {}, 3)
    assert d.delete == "u-b-0"


def test_terminating_pod_blocks() -> None:
    p = pods(dict.fromkeys(MEMBERS, True), {"u-a-0": "new"}, {"u-a-0"})
    ok, why = may_disrupt_one(MEMBERS, p, 2)
    assert not ok and "restarting" in why


def test_a_pod_started_before_its_key_rotation_is_outdated() -> None:
    p = PodView("x", True, False, "new", "2026-01-01T00:00:00Z")
    assert outdated(p, "new", "2026-01-01T00:00:05Z")
    assert outdated(p, "new", "2026-01-01T00:00:00Z")  # same second: restart to be sure
    assert not outdated(p, "new", "2025-12-31T23:59:59Z")
    assert not outdated(p, "new", "")


def test_a_member_goes_down_only_once_every_pod_is_settled() -> None:
    """Real pods: a neighbour replaced 27 s earlier was still dialled at its old address
    (cluster DNS cache), so the next restart left the proposer without a reachable voter."""
    now = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
    p = pods(dict.fromkeys(MEMBERS, True))
    young = PodView("u-b-0", True, False, "new", "2026-01-01T00:00:51Z")  # 9 s old
    p["u-b-0"] = young
    d = decide(MEMBERS, p, WANT, {}, 2, now, SETTLE_SECONDS)
    assert d.delete is None and d.waiting
    assert "u-b-0 started 9s ago" in d.reason and "35s old" in d.reason
    ok, why = may_disrupt_one(MEMBERS, p, 2, now, SETTLE_SECONDS)
    assert not ok and "old address" in why
    # once it is old enough, the next stale pod goes
    later = datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
    d = decide(MEMBERS, p, WANT, {}, 2, later, SETTLE_SECONDS)
    assert d.delete == "u-a-0"
    # a pod that is not ready anyway may still go first (it costs no vote)
    p["u-a-0"] = PodView("u-a-0", False, False, "old", "2026-01-01T00:00:00Z")
    assert decide(MEMBERS, p, WANT, {}, 2, now, SETTLE_SECONDS).delete == "u-a-0"
