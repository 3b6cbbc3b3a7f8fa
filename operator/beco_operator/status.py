"""The BecoNetwork status: phase, conditions and counts, from what was observed.

Pure: the reconciler gathers an :class:`Observed` and this module turns it into
the status to write. Conditions keep their ``lastTransitionTime`` while their
status does not change, so a steady network produces an identical status and
the reconciler writes nothing. The clock is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from beco_operator.names import Obj

READY = "Ready"
QUORUM = "QuorumAvailable"
DATABASE = "DatabaseReady"
KEYS = "KeysDistributed"
ROLLOUT = "RolloutWaiting"


@dataclass(frozen=True, slots=True)
class Observed:
    zones: Sequence[str]
    per_zone: int
    quorum: int
    members: int  # user nodes in the membership
    ready_by_zone: Mapping[str, int]
    singletons_ready: Mapping[str, bool]
    database_ready: bool
    database_message: str
    keys_ok: bool
    keys_message: str
    membership_generation: int
    endpoint: str
    selector: str
    zones_without_nodes: Sequence[str] = ()
    unschedulable: Sequence[str] = ()  # pods the scheduler cannot place
    rollout_pending: int = 0
    rollout_waiting: bool = False
    rollout_reason: str = ""
    membership_settled: bool = True  # every pod runs the published membership (or may)
    membership_message: str = ""
    extra_problems: Sequence[str] = field(default_factory=tuple)


def database(
    *,
    managed: bool,
    where: str,
    problem: str,
    postgres_ready: bool | None,
    sst_ready: bool,
) -> tuple[bool, str]:
    """``DatabaseReady`` and its message.

    The SST is ready only once it has connected (and authenticated) to its database, so the
    condition follows the SST: a ready Postgres pod alone proves nothing (for instance a
    retained volume that still holds an older password, or a log signed by another key).
    Why the SST is not ready is visible only in its log, so the message does not guess. ``where`` names the Postgres pod or
    the DSN Secret; ``problem`` is what is wrong with the external Secret; ``postgres_ready``
    is None when the Postgres pod does not exist.
    """
    if managed:
        if postgres_ready is None:
            return False, f"managed Postgres {where} has no pod yet"
        if not postgres_ready:
            return False, f"managed Postgres {where} is not ready"
        if not sst_ready:
            # Only the SST knows why (no login yet, a refused password, a log it cannot
            # verify): its log says; the operator must not guess.
            return False, f"managed Postgres {where} is ready but the SST is not ready; see its log"
        return True, f"managed Postgres {where} is ready and the SST is connected"
    if problem:
        return False, problem
    if not sst_ready:
        return False, (
            f"the SST is not ready with the external database (DSN in Secret {where}); see its log"
        )
    return True, f"the SST is connected to the external database (DSN in Secret {where})"


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: Sequence[Mapping[str, Any]],
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Obj:
    status = "True" if ok else "False"
    since = _stamp(now)
    for c in previous:
        if c.get("type") == ctype and c.get("status") == status and c.get("lastTransitionTime"):
            since = str(c["lastTransitionTime"])
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def compute(generation: int, obs: Observed, previous: Mapping[str, Any], now: datetime) -> Obj:
    prev_conds: Sequence[Mapping[str, Any]] = previous.get("conditions") or []
    ready_users = sum(obs.ready_by_zone.get(z, 0) for z in obs.zones)
    quorum_ok = ready_users >= obs.quorum
    all_users = ready_users == obs.members and all(
        obs.ready_by_zone.get(z, 0) == obs.per_zone for z in obs.zones
    )
    singles_down = sorted(r for r, ok in obs.singletons_ready.items() if not ok)

    problems: list[str] = []
    if obs.zones_without_nodes:
        problems.append(f"no schedulable node in zone(s) {', '.join(obs.zones_without_nodes)}")
    if obs.unschedulable:
        problems.append(f"pods cannot be scheduled: {', '.join(obs.unschedulable)}")
    if not all_users:
        short = [
            f"{z}: {obs.ready_by_zone.get(z, 0)}/{obs.per_zone}"
            for z in obs.zones
            if obs.ready_by_zone.get(z, 0) != obs.per_zone
        ]
        problems.append(f"user nodes ready per zone {', '.join(short)}")
    if singles_down:
        problems.append(f"not ready: {', '.join(singles_down)}")
    if not obs.database_ready:
        problems.append(obs.database_message)
    if not obs.keys_ok:
        problems.append(obs.keys_message)
    if obs.rollout_pending:
        problems.append(
            f"{obs.rollout_pending} user node(s) to restart"
            + (f"; waiting: {obs.rollout_reason}" if obs.rollout_waiting else "")
        )
    if not obs.membership_settled:
        problems.append(obs.membership_message or "the membership is propagating")
    problems.extend(obs.extra_problems)
    ready = not problems

    if ready:
        ready_cond = condition(
            prev_conds, READY, True, "NetworkReady", "every member is ready", generation, now
        )
    else:
        if obs.zones_without_nodes:
            reason = "ZoneWithoutNodes"
        elif obs.unschedulable:
            reason = "PodsUnschedulable"
        elif obs.rollout_pending:
            reason = "RollingOut"
        elif not obs.keys_ok:
            reason = "KeysPending"
        elif not obs.database_ready:
            reason = "DatabaseNotReady"
        elif not obs.membership_settled:
            reason = "MembershipPropagating"
        else:
            reason = "PodsNotReady"
        ready_cond = condition(
            prev_conds, READY, False, reason, "; ".join(problems), generation, now
        )

    conds = [
        ready_cond,
        condition(
            prev_conds,
            QUORUM,
            quorum_ok,
            "QuorumReady" if quorum_ok else "QuorumLost",
            f"{ready_users} of {obs.members} user nodes ready, quorum {obs.quorum}",
            generation,
            now,
        ),
        condition(
            prev_conds,
            DATABASE,
            obs.database_ready,
            "DatabaseReady" if obs.database_ready else "DatabaseNotReady",
            obs.database_message,
            generation,
            now,
        ),
        condition(
            prev_conds,
            KEYS,
            obs.keys_ok,
            "KeysDistributed" if obs.keys_ok else "KeysPending",
            obs.keys_message,
            generation,
            now,
        ),
        condition(
            prev_conds,
            ROLLOUT,
            obs.rollout_waiting,
            "WaitingForQuorum" if obs.rollout_waiting else "NotWaiting",
            obs.rollout_reason if obs.rollout_waiting else "no restart is held back",
            generation,
            now,
        ),
    ]
    prev_phase = previous.get("phase")
    if ready:
        phase = "Ready"
    elif (
        obs.zones_without_nodes
        or obs.unschedulable
        or (not quorum_ok and prev_phase in ("Ready", "Degraded"))
    ):
        phase = "Degraded"
    elif prev_phase in ("Ready", "Degraded") and not obs.rollout_pending and obs.membership_settled:
        phase = "Degraded"
    else:
        phase = "Progressing"
    return {
        "observedGeneration": generation,
        "phase": phase,
        "zones": ",".join(obs.zones),
        "members": obs.members,
        "quorum": obs.quorum,
        "ready": f"{ready_users}/{obs.members}",
        "readyUserNodes": ready_users,
        "readyByZone": {z: obs.ready_by_zone.get(z, 0) for z in obs.zones},
        "userNodesPerZone": min((obs.ready_by_zone.get(z, 0) for z in obs.zones), default=0),
        "selector": obs.selector,
        "endpoint": obs.endpoint,
        "membershipGeneration": obs.membership_generation,
        "rollout": {
            "waiting": obs.rollout_waiting,
            "reason": obs.rollout_reason,
            "pending": obs.rollout_pending,
        },
        "conditions": conds,
    }


def failed(
    generation: int, reason: str, message: str, previous: Mapping[str, Any], now: datetime
) -> Obj:
    """The status of a spec that passed the schema but cannot work."""
    prev_conds: Sequence[Mapping[str, Any]] = previous.get("conditions") or []
    out = {
        k: v for k, v in previous.items() if k not in ("conditions", "phase", "observedGeneration")
    }
    out["observedGeneration"] = generation
    out["phase"] = "Failed"
    kept = [c for c in prev_conds if c.get("type") not in (READY,)]
    out["conditions"] = [
        condition(prev_conds, READY, False, reason, message, generation, now),
        *kept,
    ]
    return out
