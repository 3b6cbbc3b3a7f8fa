"""The BecoNetwork spec as typed values, with the CRD's defaults.

The API server applies the CRD's defaults and CEL rules before the operator sees
an object; this module repeats the defaults (so a spec is usable even from an
old object) and raises :class:`SpecError` for what a schema cannot rule out, such
as a quorum that would become unreachable. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from beco_node.quorum import QuorumError, resolve_quorum

from beco_operator import backup as backup_names

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


DEFAULT_IMAGE = "ghcr.io/beco/beco:0.1.0"


def split_image(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a registry port is not a tag."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


class SpecError(ValueError):
    """A spec the operator cannot turn into a working network; the message says why."""


@dataclass(frozen=True, slots=True)
class ManagedDatabase:
    storage: str = "1Gi"
    storage_class: str | None = None
    image: str = "postgres:15"
    reclaim_policy: str = "Retain"
    resources: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_RESOURCES)


@dataclass(frozen=True, slots=True)
class ExternalDatabase:
    secret_name: str
    secret_key: str = "dsn"


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """``spec.restore``: a backup (``kubectl beco backup``) to create the network from."""

    pvc: str
    path: str  # <network>/<stamp>.dump inside the claim
    key_secret: str  # the backup's copy of the SST key


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    zones: tuple[str, ...]
    per_zone: int
    quorum: int
    quorum_requested: int | str
    image: str
    image_tag: str
    pull_policy: str
    pull_secrets: tuple[str, ...]
    user_resources: Mapping[str, Any]
    role_resources: Mapping[str, Mapping[str, Any]]
    service_type: str
    service_port: int
    service_annotations: Mapping[str, str]
    database: ManagedDatabase | ExternalDatabase
    monitoring: bool
    monitoring_interval: str
    monitoring_labels: Mapping[str, str]
    network_policy: bool
    insecure: bool
    pod_labels: Mapping[str, str]
    pod_annotations: Mapping[str, str]
    priority_class: str | None
    tolerations: tuple[Mapping[str, Any], ...]
    restore: RestoreSource | None = None

    @property
    def members(self) -> int:
        """User nodes: the voters the quorum counts."""
        return len(self.zones) * self.per_zone


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be an object")
    return value


def parse(raw: Mapping[str, Any], default_image: str = DEFAULT_IMAGE) -> NetworkSpec:
    """Turn a BecoNetwork's ``spec`` into a :class:`NetworkSpec`, or say why it cannot work.

    ``default_image`` (the operator's own image) fills in an unset image repository or tag.
    """
    zones_raw = raw.get("zones")
    if not isinstance(zones_raw, list) or not zones_raw:
        raise SpecError("spec.zones must list at least one zone")
    zones = tuple(str(z) for z in zones_raw)
    if len(set(zones)) != len(zones):
        raise SpecError("spec.zones must be unique")
    user = _obj(raw.get("userNodes"), "spec.userNodes")
    per_zone = user.get("perZone", 1)
    if not isinstance(per_zone, int) or isinstance(per_zone, bool) or per_zone < 1:
        raise SpecError("spec.userNodes.perZone must be a positive integer")
    n = len(zones) * per_zone
    requested = raw.get("quorum", "auto")
    if not isinstance(requested, int | str) or isinstance(requested, bool):
        raise SpecError("spec.quorum must be 'auto' or an integer")
    try:
        quorum = resolve_quorum(n, requested)
    except QuorumError as exc:
        raise SpecError(f"spec.quorum: {exc}") from None

    image = _obj(raw.get("image"), "spec.image")
    service = _obj(raw.get("service"), "spec.service")
    db_raw = _obj(raw.get("database"), "spec.database") or {"managed": {}}
    database: ManagedDatabase | ExternalDatabase
    if ("managed" in db_raw) == ("external" in db_raw):
        raise SpecError("spec.database needs exactly one of managed or external")
    if "managed" in db_raw:
        m = _obj(db_raw["managed"], "spec.database.managed")
        database = ManagedDatabase(
            storage=str(m.get("storage", "1Gi")),
            storage_class=m.get("storageClassName"),
            image=str(m.get("image", "postgres:15")),
            reclaim_policy=str(m.get("reclaimPolicy", "Retain")),
            resources=m.get("resources") or DEFAULT_RESOURCES,
        )
    else:
        ext = _obj(db_raw["external"], "spec.database.external")
        ref = _obj(ext.get("secretRef"), "spec.database.external.secretRef")
        if not ref.get("name"):
            raise SpecError("spec.database.external.secretRef.name is required")
        database = ExternalDatabase(str(ref["name"]), str(ref.get("key", "dsn")))
    restore = _restore(raw, database)
    monitoring = _obj(raw.get("monitoring"), "spec.monitoring")
    pod = _obj(raw.get("podTemplate"), "spec.podTemplate")
    roles = {
        role: _obj(raw.get(role), f"spec.{role}").get("resources") or DEFAULT_RESOURCES
        for role in ("rendezvous", "validator", "sst")
    }
    return NetworkSpec(
        zones=zones,
        per_zone=per_zone,
        quorum=quorum,
        quorum_requested=requested,
        image=str(image.get("repository") or split_image(default_image)[0]),
        image_tag=str(image.get("tag") or split_image(default_image)[1]),
        pull_policy=str(image.get("pullPolicy", "IfNotPresent")),
        pull_secrets=tuple(str(s) for s in image.get("pullSecrets") or ()),
        user_resources=user.get("resources") or DEFAULT_RESOURCES,
        role_resources=roles,
        service_type=str(service.get("type", "ClusterIP")),
        service_port=int(service.get("port", 9001)),
        service_annotations=dict(service.get("annotations") or {}),
        database=database,
        monitoring=bool(monitoring.get("enabled", True)),
        monitoring_interval=str(monitoring.get("interval", "30s")),
        monitoring_labels=dict(monitoring.get("labels") or {}),
        network_policy=bool(
            _obj(raw.get("networkPolicy"), "spec.networkPolicy").get("enabled", True)
        ),
        insecure=bool(_obj(raw.get("transport"), "spec.transport").get("insecure", False)),
        pod_labels=dict(pod.get("labels") or {}),
        pod_annotations=dict(pod.get("annotations") or {}),
        priority_class=pod.get("priorityClassName"),
        tolerations=tuple(pod.get("tolerations") or ()),
        restore=restore,
    )


def _restore(
    raw: Mapping[str, Any], database: ManagedDatabase | ExternalDatabase
) -> RestoreSource | None:
    r = _obj(raw.get("restore"), "spec.restore")
    if not r:
        return None
    if isinstance(database, ExternalDatabase):
        raise SpecError(
            "spec.restore needs a managed database (restore an external database with its "
            "own tools)"
        )
    pvc, where = str(r.get("pvc") or ""), str(r.get("path") or "")
    if not pvc:
        raise SpecError("spec.restore.pvc names the volume claim holding the backup")
    try:
        network, ts = backup_names.parse_path(where)
    except ValueError as exc:
        raise SpecError(f"spec.restore.path: {exc}") from None
    key = str(r.get("keySecret") or backup_names.key_secret(network, ts))
    return RestoreSource(pvc, where, key)
