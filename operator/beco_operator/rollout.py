"""Quorum-safe restarts of user nodes.

User-node StatefulSets use ``OnDelete``, so a changed template restarts nothing
by itself: the operator picks the pods to restart, one at a time, the way
Strimzi's KafkaRoller restarts a broker only when every partition keeps its
``min.insync.replicas``. A ready user node is restarted only when every member
is up and ready and the others still make a quorum; an outdated pod that is not
ready anyway may go first, as deleting it costs no vote. Key rotation uses the
same guard. Pure: the caller deletes the pod it is told to.

Ready is not yet reachable: peers dial a member by its DNS name, and a replaced pod's
new address reaches them only when the cluster DNS's cached answer expires (CoreDNS
caches for 30 s) and their gRPC channel resolves again. Seen on real pods: a user node
restarted 27 s after its neighbour was replaced left the proposer with no reachable voter
(it still dialled the neighbour's old pod IP), and commits failed until that expired. So a member may go down only once
every member's pod is ``settle`` seconds old (like a Deployment's ``minReadySeconds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SETTLE_SECONDS = 35.0  # the cluster DNS's cache (30 s) and a margin


@dataclass(frozen=True, slots=True)
class PodView:
    """What the rollout needs to know about one user-node pod."""

    name: str
    ready: bool
    terminating: bool
    config_hash: str
    created: str  # RFC 3339, as the API server writes it (sortable)


@dataclass(frozen=True, slots=True)
class Decision:
    delete: str | None  # the pod to restart now, if any
    waiting: bool  # a restart is due but not safe yet
    reason: str
    pending: int  # user nodes still to restart


def outdated(pod: PodView, want_hash: str, key_rotated_at: str) -> bool:
    """A pod runs an old template, or may have started before its key was rotated.

    Timestamps have one-second resolution, so a pod created in the second of a
    rotation counts as old: one restart too many beats running a stale key.
    """
    return pod.config_hash != want_hash or (bool(key_rotated_at) and pod.created <= key_rotated_at)


def _age(created: str, now: datetime) -> float | None:
    try:
        born = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return (now - born) / timedelta(seconds=1)


def may_disrupt_one(
    members: Sequence[str],
    pods: Mapping[str, PodView],
    quorum: int,
    now: datetime | None = None,
    settle: float = 0.0,
) -> tuple[bool, str]:
    """Whether one ready user node may go down now without risking the quorum, and why not.
    With ``now``, every member's pod must also be ``settle`` seconds old (module doc)."""
    missing = [m for m in members if m not in pods]
    if missing:
        return False, f"user node {missing[0]} has no pod yet"
    for m in members:
        p = pods[m]
        if p.terminating:
            return False, f"user node {m} is restarting"
        if not p.ready:
            return False, f"user node {m} is not ready"
    if now is not None and settle > 0:
        for m in members:
            age = _age(pods[m].created, now)
            if age is not None and age < settle:
                return False, (
                    f"user node {m} started {max(age, 0):.0f}s ago: its peers may still dial its "
                    f"old address (cluster DNS cache); waiting until it is {settle:.0f}s old"
                )
    ready = sum(1 for m in members if pods[m].ready)
    if ready - 1 < quorum:
        return False, (
            f"restarting one of {ready} ready user nodes would leave fewer than the quorum {quorum}"
        )
    return True, ""


def decide(
    members: Sequence[str],
    pods: Mapping[str, PodView],
    want_hash: Mapping[str, str],
    key_rotated_at: Mapping[str, str],
    quorum: int,
    now: datetime | None = None,
    settle: float = 0.0,
) -> Decision:
    """The next user-node restart, given every member's pod and the hash it should run.

    ``want_hash`` maps a member name to its desired config hash.
    """
    stale = [
        m
        for m in members
        if m in pods and outdated(pods[m], want_hash[m], key_rotated_at.get(m, ""))
    ]
    if not stale:
        return Decision(None, False, "", 0)
    for m in stale:
        p = pods[m]
        if not p.ready and not p.terminating:
            return Decision(m, False, f"restarting {m}, which is not ready anyway", len(stale))
    ok, why = may_disrupt_one(members, pods, quorum, now, settle)
    if not ok:
        return Decision(None, True, why, len(stale))
    return Decision(stale[0], False, f"restarting {stale[0]}", len(stale))
