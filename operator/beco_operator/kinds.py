"""The one table of the API kinds the operator reads or writes.

The API client's paths, the children kopf watches and the children pruned when the spec no
longer asks for them are all derived from :data:`KINDS`. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from beco_operator import names


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    api_version: str  # "v1", "apps/v1", ...
    plural: str
    namespaced: bool = True
    watch: bool = False  # a change of a labelled object wakes its network's worker
    prune: bool = False  # a rendered child: removed when the spec no longer asks for it
    optional: bool = False  # served only when its CRD is installed (never watched)

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


KINDS: tuple[Kind, ...] = (
    Kind("Pod", "v1", "pods", watch=True),
    Kind("Service", "v1", "services", watch=True, prune=True),
    Kind("ConfigMap", "v1", "configmaps", watch=True),
    Kind("Secret", "v1", "secrets", watch=True),
    Kind("StatefulSet", "apps/v1", "statefulsets", watch=True, prune=True),
    Kind("Deployment", "apps/v1", "deployments", watch=True, prune=True),
    Kind("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets", watch=True, prune=True),
    Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", watch=True, prune=True),
    Kind("PodMonitor", "monitoring.coreos.com/v1", "podmonitors", prune=True, optional=True),
    Kind("Event", "v1", "events"),
    Kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims"),
    Kind("Job", "batch/v1", "jobs"),  # the restore Job (backup.py)
    Kind("Node", "v1", "nodes", namespaced=False),
    Kind("Lease", "coordination.k8s.io/v1", "leases"),
    Kind(names.KIND, names.API_VERSION, names.PLURAL),
)

BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}


def watched() -> list[Kind]:
    return [k for k in KINDS if k.watch]


def prunable(optional_served: bool) -> list[str]:
    """Kinds of rendered children, in table order; optional ones only when served."""
    return [k.kind for k in KINDS if k.prune and (optional_served or not k.optional)]
