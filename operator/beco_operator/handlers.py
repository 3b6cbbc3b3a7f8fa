"""kopf wiring: watch BecoNetworks and their children, hand every event to the manager.

Handlers are thin: they only wake the worker of the network concerned. Child
events find their network by the ``beco.dev/network`` label, so a deleted or
edited child is restored within one reconcile.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from beco_operator import clock, kube, names
from beco_operator.manager import Manager
from beco_operator.reconcile import Reconciler
from beco_operator.spec import DEFAULT_IMAGE

log = logging.getLogger("beco_operator")

RESYNC_SECONDS = 60.0
NODE_IMAGE = os.environ.get("BECO_OPERATOR_IMAGE") or DEFAULT_IMAGE


class _State:
    manager: Manager | None = None
    info: kopf.ConnectionInfo | None = None


STATE = _State()

CHILD_KINDS = (
    ("v1", "pods"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("v1", "secrets"),
    ("apps/v1", "statefulsets"),
    ("apps/v1", "deployments"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "networkpolicies"),
)
MANAGED = {"app.kubernetes.io/managed-by": names.MANAGED_BY}


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    STATE.info = STATE.info or kube.login()
    return STATE.info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # the operator posts its own Events, on decisions only
    settings.scanning.disabled = True  # no RBAC on CRDs/namespaces: install the CRD first
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    k = kube.Kube(STATE.info or kube.login())
    STATE.manager = Manager(k, Reconciler(k, clock.utcnow, NODE_IMAGE), resync=RESYNC_SECONDS)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if STATE.manager is not None:
        await STATE.manager.stop()
        await STATE.manager.kube.close()
        STATE.manager = None


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def network_event(
    type: str | None, name: str | None, namespace: str | None, **_: Any
) -> None:
    if STATE.manager is None or not name or not namespace:
        return
    if type == "DELETED":
        STATE.manager.forget(namespace, name)
    else:
        STATE.manager.trigger(namespace, name)


async def _child_event(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    network = labels.get(names.NETWORK_LABEL)
    if STATE.manager is not None and network and namespace:
        STATE.manager.trigger(namespace, network)


for _api_version, _plural in CHILD_KINDS:
    kopf.on.event(_api_version, _plural, labels=MANAGED, id=f"child-{_plural}")(_child_event)
