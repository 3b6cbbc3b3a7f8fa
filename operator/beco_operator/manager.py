"""One worker task per BecoNetwork, woken by watch events and a periodic resync.

kopf delivers watch events (of BecoNetworks and of their labelled children);
the handlers only call :meth:`Manager.trigger`. The worker of a network then
re-reads it and reconciles once for any burst of events, so reconciles of one
network never overlap and many networks proceed concurrently. Using plain
event handlers (no kopf create/update handlers, no daemons) means kopf itself
stores nothing on the objects: the only writes are the operator's decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from beco_operator import metrics, names
from beco_operator.kube import Kube, path
from beco_operator.reconcile import Caps, Reconciler

log = logging.getLogger("beco_operator.manager")

CAPS_TTL = 30.0
# Wait this long after an event before reconciling, to take a burst of events in one pass:
# short for the first event after a quiet spell, longer while a network is busy.
DEBOUNCE_IDLE = 0.05
DEBOUNCE_BUSY = 0.5
BUSY_WINDOW = 2.0


@dataclass
class _Worker:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Manager:
    def __init__(self, kube: Kube, reconciler: Reconciler, resync: float = 60.0) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.resync = resync
        self.workers: dict[tuple[str, str], _Worker] = {}
        self.phases: dict[tuple[str, str], str] = {}
        self._caps = Caps()
        self._caps_at = 0.0
        self._caps_lock = asyncio.Lock()

    def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        w = self.workers.get(key)
        if w is None or w.task is None or w.task.done():
            w = _Worker()
            self.workers[key] = w
            w.task = asyncio.create_task(self._run(key, w), name=f"reconcile {namespace}/{name}")
        w.wake.set()

    def forget(self, namespace: str, name: str) -> None:
        w = self.workers.pop((namespace, name), None)
        if w is not None and w.task is not None:
            w.task.cancel()
        self.phases.pop((namespace, name), None)
        self._export_phases()
        for gauge in (metrics.ROLLOUT_WAITING, metrics.ROLLOUT_PENDING):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.workers.clear()

    def _export_phases(self) -> None:
        counts: dict[str, int] = {
            p: 0 for p in ("Pending", "Progressing", "Ready", "Degraded", "Failed")
        }
        for p in self.phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            metrics.NETWORKS.labels(p).set(n)

    async def caps(self) -> Caps:
        async with self._caps_lock:
            if time.monotonic() - self._caps_at > CAPS_TTL:
                nodes = await self.kube.list(path("Node"))
                zones = {
                    (n["metadata"].get("labels") or {}).get(names.TOPOLOGY_ZONE, "")
                    for n in nodes
                    if not (n.get("spec") or {}).get("unschedulable")
                }
                self._caps = Caps(
                    pod_monitor=await self.kube.has_api("monitoring.coreos.com/v1", "PodMonitor"),
                    zones_with_nodes=frozenset(z for z in zones if z),
                )
                self._caps_at = time.monotonic()
            return self._caps

    async def _run(self, key: tuple[str, str], w: _Worker) -> None:
        ns, name = key
        backoff = 1.0
        delay: float | None = None
        last = 0.0
        while True:
            timeout = self.resync if delay is None else delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.wake.wait(), timeout=timeout)
            busy = time.monotonic() - last < BUSY_WINDOW
            await asyncio.sleep(DEBOUNCE_BUSY if busy else DEBOUNCE_IDLE)
            w.wake.clear()
            last = time.monotonic()
            started = time.perf_counter()
            try:
                body = await self.kube.get(path(names.KIND, ns, name))
                if body is None or body["metadata"].get("deletionTimestamp"):
                    self.workers.pop(key, None)
                    self.phases.pop(key, None)
                    self._export_phases()
                    return
                caps = await self.caps()
                result = await self.reconciler.reconcile(body, caps)
                metrics.RECONCILES.labels("ok").inc()
                self.phases[key] = str(result.status.get("phase", "Pending"))
                self._export_phases()
                delay = result.requeue_after
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.RECONCILES.labels("error").inc()
                log.exception("reconcile of %s/%s failed: %s", ns, name, exc)
                delay = backoff
                backoff = min(backoff * 2, 60.0)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
