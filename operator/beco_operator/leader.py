"""Leader election on a coordination.k8s.io Lease, for more than one operator replica.

The standard scheme (as client-go's leaderelection): a replica may take the
Lease when it is free, its own, or expired (``renewTime + leaseDurationSeconds``
in the past); the holder renews it every few seconds; a replica that cannot
renew before its lease runs out stops reconciling and exits, and a standby
takes over. Writes use the Lease's resourceVersion, so two replicas can never
both win. A replica that stops on purpose (SIGTERM: a rolling update, a drain)
releases the Lease once it has stopped reconciling (client-go's
``ReleaseOnCancel``), so its successor takes over at its next try instead of
waiting out the lease. :func:`can_take` is pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from beco_operator import metrics
from beco_operator.clock import Clock
from beco_operator.kube import ApiError, Kube, path
from beco_operator.names import Obj

log = logging.getLogger("beco_operator.leader")

MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _parse(ts: str) -> datetime | None:
    for fmt in (MICRO, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(ts, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def can_take(lease: Mapping[str, Any] | None, identity: str, now: datetime) -> bool:
    """Whether ``identity`` may hold ``lease`` at ``now``."""
    if lease is None:
        return True
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = _parse(str(spec.get("renewTime") or spec.get("acquireTime") or ""))
    duration = int(spec.get("leaseDurationSeconds") or 15)
    return renewed is None or renewed + timedelta(seconds=duration) < now


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds

    def _spec(self, now: datetime, acquired: str | None, transitions: int) -> Obj:
        stamp = now.strftime(MICRO)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": acquired or stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        url = path("Lease", self.namespace, self.name)
        now = self.clock()
        lease = await self.kube.get(url)
        if not can_take(lease, self.identity, now):
            return False
        try:
            if lease is None:
                created = await self.kube.create(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": self._spec(now, None, 0),
                    }
                )
                return created is not None
            old = lease.get("spec") or {}
            mine = old.get("holderIdentity") == self.identity
            acquired = old.get("acquireTime") if mine else None
            transitions = int(old.get("leaseTransitions") or 0) + (0 if mine else 1)
            lease = dict(lease)
            lease["spec"] = self._spec(now, acquired, transitions)
            await self.kube.replace(lease)
            return True
        except ApiError as exc:
            if exc.status == 409:  # somebody else wrote it first
                return False
            raise

    async def acquire(self) -> None:
        while True:
            if await self.try_acquire():
                break
            await asyncio.sleep(self.renew_seconds)
        log.info("acquired the leader lease %s/%s as %s", self.namespace, self.name, self.identity)
        metrics.LEADER.set(1)

    async def hold(self) -> None:
        """Renew until renewing fails for a whole lease period; then return (leadership lost)."""
        last_ok = self.clock()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                ok = await self.try_acquire()
            except Exception as exc:
                log.warning("could not renew the leader lease: %s", exc)
                ok = False
            now = self.clock()
            if ok:
                last_ok = now
            elif (now - last_ok).total_seconds() >= self.lease_seconds:
                metrics.LEADER.set(0)
                log.error("lost the leader lease %s/%s", self.namespace, self.name)
                return

    async def release(self) -> bool:
        """Give the Lease up if this replica still holds it (call only once reconciling has
        stopped); returns whether it did. Best effort: on failure the Lease expires."""
        url = path("Lease", self.namespace, self.name)
        try:
            lease = await self.kube.get(url)
            spec = dict((lease or {}).get("spec") or {})
            if lease is None or spec.get("holderIdentity") != self.identity:
                return False
            spec.update(
                holderIdentity="", leaseDurationSeconds=1, renewTime=self.clock().strftime(MICRO)
            )
            await self.kube.replace({**lease, "spec": spec})
        except Exception as exc:
            log.warning("could not release the leader lease (it expires instead): %s", exc)
            return False
        metrics.LEADER.set(0)
        log.info("released the leader lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True
