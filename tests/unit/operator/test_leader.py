from __future__ import annotations

from datetime import timedelta

from beco_operator.leader import can_take

from .conftest import NOW


def lease(holder: str, renewed_ago: float, duration: int = 15) -> dict[str, object]:
    t = (NOW - timedelta(seconds=renewed_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": {"holderIdentity": holder, "renewTime": t, "leaseDurationSeconds": duration}}


def test_free_own_or_expired_lease_can_be_taken() -> None:
    assert can_take(None, "me", NOW)
    assert can_take({"spec": {}}, "me", NOW)
    assert can_take(lease("me", 1), "me", NOW)
    assert can_take(lease("other", 16), "me", NOW)


def test_a_live_lease_of_another_replica_cannot() -> None:
    assert not can_take(lease("other", 3), "me", NOW)
