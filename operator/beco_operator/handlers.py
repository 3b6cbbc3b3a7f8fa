"""kopf wiring: watch BecoNetworks and their children, hand every event to the manager.

Handlers are thin: they only wake the worker of the network concerned. Child
events find their network by the ``beco.dev/network`` label, so a deleted or
edited child is restored within one reconcile. The operator's settings and its
manager live in kopf's memo (one :class:`Runtime`, shared by every handler).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from beco_operator import clock, kinds, kube, names
from beco_operator.config import OperatorConfig
from beco_operator.manager import Manager
from beco_operator.podmetrics import GenerationReader, HttpPodMetrics, NoPodMetrics
from beco_operator.reconcile import Reconciler

log = logging.getLogger("beco_operator")

MANAGED = {"app.kubernetes.io/managed-by": names.MANAGED_BY}


@dataclass
class Runtime:
    """What the handlers share: settings in, the manager and credentials once started.

    kopf hands each handler a shallow copy of the memo, so the memo holds this one object.
    """

    config: OperatorConfig = field(default_factory=OperatorConfig)
    manager: Manager | None = None
    info: kopf.ConnectionInfo | None = None


def memo_for(config: OperatorConfig) -> kopf.Memo:
    return kopf.Memo(runtime=Runtime(config))


def _runtime(memo: Any) -> Runtime:
    rt = getattr(memo, "runtime", None)
    if not isinstance(rt, Runtime):  # started without main.run (e.g. `kopf run`)
        rt = Runtime()
        memo.runtime = rt
    return rt


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    rt = _runtime(memo)
    rt.info = rt.info or kube.login()
    return rt.info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.posting.enabled = False  # the operator posts its own Events, on decisions only
    settings.scanning.disabled = True  # no RBAC on CRDs/namespaces: install the CRD first
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    rt = _runtime(memo)
    k = kube.Kube(rt.info or kube.login())
    reader: GenerationReader = HttpPodMetrics() if rt.config.pod_metrics else NoPodMetrics()
    rt.manager = Manager(
        k, Reconciler(k, clock.utcnow, rt.config, reader), resync=rt.config.resync_seconds
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    rt = _runtime(memo)
    if rt.manager is not None:
        await rt.manager.stop()
        await rt.manager.reconciler.pod_metrics.close()
        await rt.manager.kube.close()
        rt.manager = None


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def network_event(
    type: str | None, name: str | None, namespace: str | None, memo: Any, **_: Any
) -> None:
    manager = _runtime(memo).manager
    if manager is None or not name or not namespace:
        return
    if type == "DELETED":
        manager.forget(namespace, name)
    else:
        manager.trigger(namespace, name)


async def _child_event(labels: kopf.Labels, namespace: str | None, memo: Any, **_: Any) -> None:
    network = labels.get(names.NETWORK_LABEL)
    manager = _runtime(memo).manager
    if manager is not None and network and namespace:
        manager.trigger(namespace, network)


for _kind in kinds.watched():
    kopf.on.event(_kind.api_version, _kind.plural, labels=MANAGED, id=f"child-{_kind.plural}")(
        _child_event
    )
