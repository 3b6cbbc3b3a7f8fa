from __future__ import annotations

from datetime import timedelta
from typing import Any

from beco_operator import status

from .conftest import NOW


def obs(**kw: Any) -> status.Observed:
    base: dict[str, Any] = dict(
        zones=("a", "b", "c"),
        per_zone=1,
        quorum=2,
        members=3,
        ready_by_zone={"a": 1, "b": 1, "c": 1},
        singletons_ready={"rendezvous": True, "validator": True, "sst": True},
        database_ready=True,
        database_message="db ok",
        keys_ok=True,
        keys_message="6 keys",
        membership_generation=1,
        endpoint="demo.ns.svc:9001",
        selector="x=y",
        zones_without_nodes=(),
    )
    base.update(kw)
    return status.Observed(**base)


def cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_ready_network() -> None:
    st = status.compute(4, obs(), {}, NOW)
    assert st["phase"] == "Ready" and st["observedGeneration"] == 4
    assert st["ready"] == "3/3" and st["quorum"] == 2 and st["members"] == 3
    assert st["readyByZone"] == {"a": 1, "b": 1, "c": 1}
    for t in ("Ready", "QuorumAvailable", "DatabaseReady", "KeysDistributed"):
        c = cond(st, t)
        assert c["status"] == "True" and c["reason"] and c["observedGeneration"] == 4
    assert cond(st, "RolloutWaiting")["status"] == "False"


def test_steady_state_is_byte_identical() -> None:
    st = status.compute(1, obs(), {}, NOW)
    assert status.compute(1, obs(), st, NOW + timedelta(minutes=5)) == st


def test_degraded_after_ready_with_reason() -> None:
    ready = status.compute(1, obs(), {}, NOW)
    st = status.compute(
        1, obs(ready_by_zone={"a": 1, "b": 0, "c": 0}), ready, NOW + timedelta(seconds=9)
    )
    assert st["phase"] == "Degraded"
    q = cond(st, "QuorumAvailable")
    assert q["status"] == "False" and q["reason"] == "QuorumLost"
    assert q["lastTransitionTime"] == "2026-01-02T03:04:14Z"
    assert "b: 0/1" in cond(st, "Ready")["message"]


def test_zone_without_nodes_is_degraded() -> None:
    st = status.compute(1, obs(zones_without_nodes=("c",), ready_by_zone={"a": 1, "b": 1}), {}, NOW)
    assert st["phase"] == "Degraded"
    assert cond(st, "Ready")["reason"] == "ZoneWithoutNodes"


def test_waiting_rollout_shows_in_a_condition() -> None:
    st = status.compute(
        2,
        obs(rollout_pending=2, rollout_waiting=True, rollout_reason="user node x is not ready"),
        {},
        NOW,
    )
    c = cond(st, "RolloutWaiting")
    assert (
        c["status"] == "True"
        and c["reason"] == "WaitingForQuorum"
        and "x is not ready" in c["message"]
    )
    assert st["phase"] == "Progressing"
    assert st["rollout"] == {"waiting": True, "reason": "user node x is not ready", "pending": 2}


def test_failed_spec() -> None:
    st = status.failed(
        3, "InvalidSpec", "spec.quorum: quorum 9 is unreachable", {"members": 3}, NOW
    )
    assert st["phase"] == "Failed" and st["members"] == 3
    assert cond(st, "Ready")["reason"] == "InvalidSpec"


def test_database_ready_follows_the_sst_not_the_postgres_pod_alone() -> None:
    """A retained volume with another password: Postgres is ready, the SST cannot log in."""

    def managed(pg: bool | None, sst: bool) -> tuple[bool, str]:
        return status.database(
            managed=True, where="demo-postgres-0", problem="", postgres_ready=pg, sst_ready=sst
        )

    assert managed(True, True)[0] is True
    ok, msg = managed(True, False)
    assert ok is False and "SST" in msg and "demo-postgres-0" in msg and "see its log" in msg
    assert "password" not in msg  # the operator cannot see why the SST is not ready
    assert managed(False, True) == (False, "managed Postgres demo-postgres-0 is not ready")
    assert managed(None, False) == (False, "managed Postgres demo-postgres-0 has no pod yet")

    def external(problem: str, sst: bool) -> tuple[bool, str]:
        return status.database(
            managed=False, where="pg", problem=problem, postgres_ready=None, sst_ready=sst
        )

    assert external("the database Secret pg does not exist", True) == (
        False,
        "the database Secret pg does not exist",
    )
    ok, msg = external("", False)
    assert ok is False and "see its log" in msg and "pg" in msg
    assert external("", True)[0] is True


def test_database_condition_false_while_the_sst_is_not_connected() -> None:
    ok, msg = status.database(
        managed=True, where="demo-postgres-0", problem="", postgres_ready=True, sst_ready=False
    )
    st = status.compute(
        1,
        obs(
            database_ready=ok,
            database_message=msg,
            singletons_ready={"rendezvous": True, "validator": True, "sst": False},
        ),
        {},
        NOW,
    )
    cond = {c["type"]: c for c in st["conditions"]}["DatabaseReady"]
    assert cond["status"] == "False" and "the SST is not" in cond["message"]
    assert st["phase"] != "Ready"


def test_a_propagating_membership_holds_ready_and_says_why() -> None:
    prev = status.compute(1, obs(), {}, NOW)
    assert prev["phase"] == "Ready"
    st = status.compute(
        1,
        obs(membership_settled=False, membership_message="generation 2 reached 2 of 3 pods"),
        prev,
        NOW,
    )
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["reason"] == "MembershipPropagating"
    assert "2 of 3 pods" in ready["message"]
    assert st["phase"] == "Progressing"  # a change under way, not a fault
