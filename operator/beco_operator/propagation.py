"""Membership changes that keep commits flowing while the new membership reaches every pod.

The kubelet refreshes a mounted ConfigMap after a delay (seconds here, a minute or two with
its default sync), so for a while some nodes run the old membership and some the new one.
Two rules keep a quorum reachable on both sides:

* :func:`may_publish`: a new membership is published only if its quorum is reachable by the
  members it keeps that are ready now plus the members it adds (who start with it), unless
  the current membership's quorum is lost anyway. A quorum increase the ready nodes cannot
  meet waits, with its reason in the status.
* :func:`propagation` and :func:`user_replicas`: members that leave keep running until every
  remaining pod has loaded the new generation, so nodes still on the old (larger) quorum can
  collect their votes. The operator learns a pod's generation from its
  ``beco_membership_generation`` gauge; a pod created after the publication started with it;
  a pod it cannot read counts as loaded only once ``wait`` seconds have passed since the
  publication (the bounded fallback, reported in the status).

Pure: the reconciler passes what it read and applies the decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PodGeneration:
    """One member's pod as far as the membership is concerned."""

    name: str
    created: str  # RFC 3339 seconds, as the API server writes it
    loaded: int | None  # the gauge's value; None when unreadable


@dataclass(frozen=True, slots=True)
class Propagation:
    settled: bool
    message: str  # for the status; "" when settled with nothing to say
    pending: tuple[str, ...] = ()  # pods not known to have loaded the generation


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def propagation(
    generation: int,
    published_at: str,
    pods: Sequence[PodGeneration],
    now: datetime,
    wait: float,
) -> Propagation:
    """Whether every member's pod runs membership ``generation`` (or may be assumed to)."""
    if generation <= 1:  # the first membership: no pod ever ran an older one
        return Propagation(True, "")
    behind: list[str] = []
    unknown: list[str] = []
    for p in pods:
        if published_at and p.created > published_at:
            continue  # started after the publication: mounted the new file
        if p.loaded is None:
            unknown.append(p.name)
        elif p.loaded < generation:
            behind.append(p.name)
    if not behind and not unknown:
        return Propagation(True, "")
    elapsed = _elapsed(published_at, now)
    loaded = len(pods) - len(behind) - len(unknown)
    if elapsed >= wait:
        if behind:
            return Propagation(
                True,
                f"membership generation {generation}: {', '.join(behind)} still report an "
                f"older generation after {wait:g}s; proceeding",
                tuple(behind),
            )
        return Propagation(True, "")
    if behind:
        msg = (
            f"membership generation {generation} reached {loaded} of {len(pods)} pods; "
            f"waiting for {', '.join(behind)} (at most {wait:g}s)"
        )
    else:
        msg = (
            f"membership generation {generation}: cannot read the generation of "
            f"{', '.join(unknown)} from their metrics; assuming it loaded {wait:g}s after "
            f"publication ({max(0.0, wait - elapsed):.0f}s left)"
        )
    return Propagation(False, msg, tuple(behind + unknown))


def _elapsed(published_at: str, now: datetime) -> float:
    if not published_at:
        return float("inf")
    try:
        then = datetime.strptime(published_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    except ValueError:
        return float("inf")
    return (now - then).total_seconds()


def published_at(previous_text: str | None, new_text: str, previous_at: str, now: datetime) -> str:
    """The publication time to record with ``new_text``: kept while the text is unchanged."""
    return previous_at if previous_text == new_text and previous_at else _stamp(now)


def may_publish(
    old_users: Collection[str] | None,
    old_quorum: int,
    new_users: Collection[str],
    new_quorum: int,
    ready: Collection[str],
) -> tuple[bool, str]:
    """Whether a membership of ``new_users`` with ``new_quorum`` may replace the current one."""
    if old_users is None:
        return True, ""
    kept = set(old_users) & set(new_users)
    added = set(new_users) - set(old_users)
    reachable_new = len(kept & set(ready)) + len(added)
    reachable_old = len(set(old_users) & set(ready))
    if new_quorum <= reachable_new or old_quorum > reachable_old:
        return True, ""
    return False, (
        f"quorum {new_quorum} held back: {reachable_new} user node(s) of the new membership "
        f"would be ready ({len(kept & set(ready))} ready now, {len(added)} new); the current "
        f"quorum {old_quorum} stays until more are ready"
    )


def user_replicas(
    per_zone: int, live: Mapping[str, int], zones: Sequence[str], settled: bool
) -> dict[str, int]:
    """Pods per zone to run: departing members stay until the new membership has settled."""
    if settled:
        return {z: per_zone for z in zones}
    return {z: max(per_zone, live.get(z, 0)) for z in zones}
