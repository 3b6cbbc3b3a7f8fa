"""What the reconciler reads off live objects: pod readiness, schedulability, rollout views.

Pure functions of API objects (plain dicts), shared by the reconcile phases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from beco_operator import names, rollout


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def annotation(obj: Mapping[str, Any], key: str) -> str:
    return str((meta(obj).get("annotations") or {}).get(key, ""))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if meta(pod).get("deletionTimestamp"):
        return False
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def unschedulable(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return bool(c.get("reason") == "Unschedulable")
    return False


def role_ready(pods: Iterable[Mapping[str, Any]], role: str) -> bool:
    return any(
        pod_ready(p) and (meta(p).get("labels") or {}).get(names.ROLE_LABEL) == role for p in pods
    )


def pod_view(pod: Mapping[str, Any]) -> rollout.PodView:
    m = meta(pod)
    return rollout.PodView(
        name=str(m["name"]),
        ready=pod_ready(pod),
        terminating=bool(m.get("deletionTimestamp")),
        config_hash=annotation(pod, names.CONFIG_HASH_ANNOTATION),
        created=str(m.get("creationTimestamp", "")),
    )


def template_hashes(desired: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each user-node StatefulSet's (zone's) desired config hash, by zone."""
    out: dict[str, str] = {}
    for o in desired:
        labels = meta(o).get("labels") or {}
        if o["kind"] == "StatefulSet" and labels.get(names.ROLE_LABEL) == names.ROLE_USER:
            tmpl = o["spec"]["template"]
            out[str(labels[names.ZONE_LABEL])] = str(
                tmpl["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION]
            )
    return out
