"""Desired state: a BecoNetwork spec rendered into the manifests of its children.

Pure functions from a :class:`~beco_operator.spec.NetworkSpec` to plain dicts,
so every choice here is unit-tested without a cluster:

* rendezvous: Deployment + Service; validator and SST: StatefulSet + Service;
* user nodes: one StatefulSet per zone, pinned to it by a nodeSelector on
  ``topology.kubernetes.io/zone``, each with a headless Service for stable DNS;
  one client Service across every zone;
* Postgres (managed): StatefulSet + volume claim + headless Service, and the
  cluster-IP Service the SST's DSN names; its password Secret is created once
  elsewhere (it must never be regenerated);
* a PodDisruptionBudget keeping ``quorum`` user nodes up, NetworkPolicies, and
  a PodMonitor when the monitoring CRDs exist.

User-node StatefulSets use ``updateStrategy: OnDelete``: the operator restarts
their pods itself, one at a time and only while quorum holds (see rollout.py).
Pods carry a ``config-hash`` annotation over what a restart must follow, so a
scale-up (which changes the template's key volume) does not roll old pods.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from beco_operator import backup, names
from beco_operator.names import Obj
from beco_operator.spec import ExternalDatabase, ManagedDatabase, NetworkSpec, split_image

PG_USER = backup.PG_USER
PG_DB = backup.PG_DB


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(network: str, uid: str) -> Obj:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": network,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def node_args(role: str, spec: NetworkSpec) -> list[str]:
    """The ``beco-node`` command line of one role (see the node's --help)."""
    args = [
        f"--role={role}",
        f"--membership={names.MEMBERSHIP_DIR}/{names.MEMBERSHIP_KEY}",
        f"--key-file={names.KEY_DIR}/$(BECO_NODE_NAME).key",
        f"--listen=0.0.0.0:{names.PORT}",
        f"--metrics-listen=0.0.0.0:{names.METRICS_PORT}",
        f"--health-listen=0.0.0.0:{names.HEALTH_PORT}",
    ]
    if spec.insecure:
        args.append("--insecure")
    else:
        args += [
            f"--tls-cert={names.KEY_DIR}/$(BECO_NODE_NAME).crt",
            f"--tls-key={names.KEY_DIR}/$(BECO_NODE_NAME).tls.key",
            f"--tls-ca={names.MEMBERSHIP_DIR}/{names.CA_CERT_KEY}",
        ]
    return args


def _container(
    network: str,
    role: str,
    spec: NetworkSpec,
    zone: str,
    resources: Mapping[str, Any],
    member_env: Obj,
) -> Obj:
    env: list[Obj] = [member_env]
    if role == "sst":
        env.append(
            {"name": "BECO_DATABASE_URL", "valueFrom": {"secretKeyRef": _dsn_ref(network, spec)}}
        )
    return {
        "name": "beco-node",
        "image": f"{spec.image}:{spec.image_tag}",
        "imagePullPolicy": spec.pull_policy,
        "command": ["beco-node"],
        "args": node_args(role, spec),
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": names.PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": names.HEALTH_PORT, "protocol": "TCP"},
        ],
        # The health port is plaintext even with TLS on: the kubelet's probe cannot do mutual TLS.
        # Service "" is readiness (loaded and connected); "liveness" is the process's loop.
        "startupProbe": {
            "grpc": {"port": names.HEALTH_PORT, "service": names.LIVENESS_SERVICE},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "readinessProbe": {"grpc": {"port": names.HEALTH_PORT}, "periodSeconds": 5},
        "livenessProbe": {
            "grpc": {"port": names.HEALTH_PORT, "service": names.LIVENESS_SERVICE},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": dict(resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "membership", "mountPath": names.MEMBERSHIP_DIR, "readOnly": True},
            {"name": "key", "mountPath": names.KEY_DIR, "readOnly": True},
        ],
    }


def _dsn_ref(network: str, spec: NetworkSpec) -> Obj:
    if isinstance(spec.database, ExternalDatabase):
        return {"name": spec.database.secret_name, "key": spec.database.secret_key}
    return {"name": names.postgres(network), "key": "dsn"}


def _pod_spec(
    network: str,
    role: str,
    spec: NetworkSpec,
    zone: str,
    members: list[str],
    resources: Mapping[str, Any],
    member_env: Obj,
) -> Obj:
    key_sources = [
        {
            "secret": {
                "name": names.key_secret(m),
                "items": [
                    {"key": names.NODE_KEY, "path": f"{m}.key", "mode": 0o400},
                    {"key": names.TLS_CERT_KEY, "path": f"{m}.crt", "mode": 0o400},
                    {"key": names.TLS_KEY_KEY, "path": f"{m}.tls.key", "mode": 0o400},
                ],
            }
        }
        for m in members
    ]
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(network, role, spec, zone, resources, member_env)],
        "volumes": [
            {
                "name": "membership",
                "configMap": {"name": names.membership_configmap(network)},
            },
            {"name": "key", "projected": {"sources": key_sources, "defaultMode": 0o400}},
        ],
    }
    if zone:
        pod["nodeSelector"] = {names.TOPOLOGY_ZONE: zone}
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    if spec.pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.pull_secrets]
    return pod


# Parts of a pod template a running node need not restart for: the list of key Secrets
# projected into a user node's volume grows and shrinks with the zone's replica count, and a
# pod reads only its own key from it (its key's own change is a rotation, handled apart).
HASH_EXCLUDED = ("spec.volumes[name=key].projected.sources",)


def config_hash(template: Obj) -> str:
    """What a running node must be restarted for: the whole rendered template but the hash
    annotation itself and :data:`HASH_EXCLUDED`, so a new pod field can never be forgotten."""
    meta = dict(template.get("metadata") or {})
    ann = dict(meta.get("annotations") or {})
    ann.pop(names.CONFIG_HASH_ANNOTATION, None)
    meta["annotations"] = ann
    spec = dict(template["spec"])
    spec["volumes"] = [
        {**v, "projected": {k: x for k, x in v["projected"].items() if k != "sources"}}
        if v.get("name") == "key" and "projected" in v
        else v
        for v in spec.get("volumes") or []
    ]
    return digest({"metadata": meta, "spec": spec})


def _template(
    network: str,
    role: str,
    spec: NetworkSpec,
    zone: str,
    members: list[str],
    resources: Mapping[str, Any],
    member_env: Obj,
    extra_annotations: Mapping[str, str],
) -> Obj:
    labels = names.labels(network, role, spec.image_tag, zone or None)
    labels.update(spec.pod_labels)
    annotations = dict(spec.pod_annotations)
    annotations.update(extra_annotations)
    template: Obj = {
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": _pod_spec(network, role, spec, zone, members, resources, member_env),
    }
    annotations[names.CONFIG_HASH_ANNOTATION] = config_hash(template)
    return template


def _service(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
    *,
    headless: bool = False,
    port: int = names.PORT,
    service_type: str = "ClusterIP",
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    spec: Obj = {
        "selector": dict(selector),
        "ports": [
            {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP"},
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
        spec["ports"].append(
            {
                "name": "metrics",
                "port": names.METRICS_PORT,
                "targetPort": "metrics",
                "protocol": "TCP",
            }
        )
    else:
        spec["type"] = service_type
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels, annotations),
        "spec": spec,
    }


POD_NAME_ENV: Obj = {
    "name": "BECO_NODE_NAME",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
}


def singleton_kind(role: str) -> str:
    """The workload of a singleton role: the stateless rendezvous may be replaced freely."""
    return "Deployment" if role == "rendezvous" else "StatefulSet"


def _restart(tokens: Mapping[str, str] | None, role: str) -> dict[str, str]:
    token = (tokens or {}).get(role, "")
    return {names.RESTART_TOKEN_ANNOTATION: token} if token else {}


def render(
    network: str,
    namespace: str,
    uid: str,
    spec: NetworkSpec,
    *,
    singleton_key_hashes: Mapping[str, str],
    pod_monitor: bool,
    user_replicas: Mapping[str, int] | None = None,
    restart_tokens: Mapping[str, str] | None = None,
    hold_sst: bool = False,
) -> list[Obj]:
    """Every child except key Secrets, the membership ConfigMap and the Postgres password.

    ``user_replicas`` (pods per zone) may exceed the spec's while departing members wait for
    the smaller membership to reach every pod (see propagation.py). ``hold_sst``: the SST runs
    no pod (a restore into its database has not finished; see backup.py).
    """
    version = spec.image_tag
    out: list[Obj] = []

    for role in names.SINGLETON_ROLES:
        name = names.singleton(network, role)
        labels = names.labels(network, role, version)
        selector = names.selector_labels(network, role)
        member_env = {"name": "BECO_NODE_NAME", "value": name}
        template = _template(
            network,
            role,
            spec,
            "",
            [name],
            spec.role_resources[role],
            member_env,
            {
                names.KEY_HASH_ANNOTATION: singleton_key_hashes.get(role, ""),
                **_restart(restart_tokens, role),
            },
        )
        if singleton_kind(role) == "Deployment":
            workload: Obj = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(name, namespace, labels),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": selector},
                    "strategy": {"type": "Recreate"},
                    "template": template,
                },
            }
        else:
            workload = {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": _meta(name, namespace, labels),
                "spec": {
                    "replicas": 0 if hold_sst and role == names.ROLE_SST else 1,
                    "serviceName": name,
                    "selector": {"matchLabels": selector},
                    "podManagementPolicy": "Parallel",
                    "updateStrategy": {"type": "RollingUpdate"},
                    "template": template,
                },
            }
        out.append(workload)
        # A StatefulSet's serviceName must name a headless Service (its pods' DNS records);
        # not-ready addresses are published so that peers can reach a node while it starts.
        headless = workload["kind"] == "StatefulSet"
        out.append(_service(name, namespace, labels, selector, headless=headless))

    for zone in spec.zones:
        name = names.user_sts(network, zone)
        labels = names.labels(network, names.ROLE_USER, version, zone)
        selector = names.selector_labels(network, names.ROLE_USER, zone)
        replicas = max(spec.per_zone, (user_replicas or {}).get(zone, 0))
        members = [names.user_member(network, zone, i) for i in range(replicas)]
        template = _template(
            network,
            names.ROLE_USER,
            spec,
            zone,
            members,
            spec.user_resources,
            POD_NAME_ENV,
            _restart(restart_tokens, names.ROLE_USER),
        )
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": _meta(name, namespace, labels),
                "spec": {
                    "replicas": replicas,
                    "serviceName": name,
                    "selector": {"matchLabels": selector},
                    "podManagementPolicy": "Parallel",
                    "updateStrategy": {"type": "OnDelete"},
                    "template": template,
                },
            }
        )
        out.append(_service(name, namespace, labels, selector, headless=True))

    user_selector = names.selector_labels(network, names.ROLE_USER)
    out.append(
        _service(
            names.client_service(network),
            namespace,
            names.labels(network, "client", version),
            user_selector,
            port=spec.service_port,
            service_type=spec.service_type,
            annotations=spec.service_annotations,
        )
    )
    out.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(
                f"{network}-user-nodes", namespace, names.labels(network, "user-pdb", version)
            ),
            "spec": {"minAvailable": spec.quorum, "selector": {"matchLabels": user_selector}},
        }
    )
    if isinstance(spec.database, ManagedDatabase):
        out.extend(_postgres(network, namespace, spec.database))
    if spec.network_policy:
        out.extend(_network_policies(network, namespace, spec, version))
    if spec.monitoring and pod_monitor:
        out.append(_pod_monitor(network, namespace, spec, version))
    for obj in out:
        obj["metadata"]["ownerReferences"] = [owner_reference(network, uid)]
    return out


def _postgres(network: str, namespace: str, db: ManagedDatabase) -> list[Obj]:
    """Postgres' objects depend on its own image, never on the nodes' (no restart on upgrade)."""
    name = names.postgres(network)
    labels = names.labels(network, "postgres", split_image(db.image)[1])
    selector = names.selector_labels(network, "postgres")
    claim: Obj = {
        "metadata": {"name": "data", "labels": dict(selector)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": db.storage}},
        },
    }
    if db.storage_class:
        claim["spec"]["storageClassName"] = db.storage_class
    secret = {"name": name}
    pg_isready = ["pg_isready", "-h", "127.0.0.1", "-U", PG_USER, "-d", PG_DB]
    sts: Obj = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, namespace, labels),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": selector},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": db.reclaim_policy,
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": names.postgres_pod_security(),
                    "containers": [
                        {
                            "name": "postgres",
                            "image": db.image,
                            "env": [
                                {"name": "POSTGRES_USER", "value": PG_USER},
                                {"name": "POSTGRES_DB", "value": PG_DB},
                                {
                                    "name": "POSTGRES_PASSWORD",
                                    "valueFrom": {"secretKeyRef": {**secret, "key": "password"}},
                                },
                                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            ],
                            "ports": [
                                {
                                    "name": "postgres",
                                    "containerPort": names.PG_PORT,
                                    "protocol": "TCP",
                                }
                            ],
                            # exec probes: Postgres' port stays closed to all but the SST
                            "startupProbe": {
                                "exec": {"command": pg_isready},
                                "periodSeconds": 2,
                                "failureThreshold": 300,  # initdb or a long crash recovery
                            },
                            "readinessProbe": {"exec": {"command": pg_isready}, "periodSeconds": 5},
                            "livenessProbe": {
                                "exec": {"command": pg_isready},
                                "periodSeconds": 10,
                                "timeoutSeconds": 5,
                                "failureThreshold": 6,
                            },
                            "resources": dict(db.resources),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                # the only other places Postgres writes: its socket and temp files
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
    port: Obj = {
        "name": "postgres",
        "port": names.PG_PORT,
        "targetPort": "postgres",
        "protocol": "TCP",
    }
    svc: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels),
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            "ports": [dict(port)],
        },
    }
    # What the SST connects to. The headless Service's DNS record follows the pod's address:
    # a replaced pod gets a new one, and DNS caches (CoreDNS ``cache 30``) kept answering with
    # the deleted pod's address for 28 s (measured), and the SST waited that long and more to
    # reconnect. A cluster IP never changes; kube-proxy refuses connections at once while
    # there is no pod. Not-ready addresses too: the SST checks Postgres itself and reconnects
    # when it answers, not a readiness probe period later.
    client: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.postgres_service(network), namespace, labels),
        "spec": {
            "type": "ClusterIP",
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [dict(port)],
        },
    }
    return [sts, svc, client]


def log_owners(database: ManagedDatabase | ExternalDatabase, owner: Obj) -> list[Obj]:
    """The owners of what must live exactly as long as the SST's log: the network's only
    when the log goes with it.

    The log is the managed volume (kept or deleted per ``reclaimPolicy``) or the external
    database (never deleted by the operator). What follows it: the Postgres password the
    volume was initialised with, the SST's key that signed its tree heads, and the CA that
    issued the certificate kept in that key's Secret. A network re-created with the same
    name then finds all of them again.
    """
    if isinstance(database, ManagedDatabase) and database.reclaim_policy == "Delete":
        return [owner]
    return []


def _managed_dsn(password: str, service: str, namespace: str) -> str:
    host = names.service_host(service, namespace)
    return f"postgresql://{PG_USER}:{password}@{host}:{names.PG_PORT}/{PG_DB}"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def postgres_secret(network: str, namespace: str, version: str, password: str) -> Obj:
    """The managed database's credentials; created once (the password is never rewritten)."""
    name = names.postgres(network)
    dsn = _managed_dsn(password, names.postgres_service(network), namespace)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(name, namespace, names.labels(network, "postgres", version)),
        "data": {"password": _b64(password), "dsn": _b64(dsn)},
    }


def updated_dsn(network: str, namespace: str, data: Mapping[str, str]) -> str | None:
    """The ``dsn`` (base64) a managed database Secret written before the cluster-IP Service
    must get: the same password, the Service as host. None when it needs no change (already
    current, or not a DSN this operator wrote: never touched)."""
    try:
        password = base64.b64decode(data["password"], validate=True).decode()
        dsn = base64.b64decode(data["dsn"], validate=True).decode()
    except (KeyError, ValueError):
        return None
    if dsn != _managed_dsn(password, names.postgres(network), namespace):
        return None
    return _b64(_managed_dsn(password, names.postgres_service(network), namespace))


def _network_policies(network: str, namespace: str, spec: NetworkSpec, version: str) -> list[Obj]:
    member_pods = {names.NETWORK_LABEL: network, "app.kubernetes.io/managed-by": names.MANAGED_BY}
    labels = names.labels(network, "network-policy", version)
    grpc = {"port": names.PORT, "protocol": "TCP"}
    metrics = {"port": names.METRICS_PORT, "protocol": "TCP"}
    # The kubelet probes the health port from the node's address, which no pod selector matches.
    health = {"port": names.HEALTH_PORT, "protocol": "TCP"}
    from_members = [{"podSelector": {"matchLabels": member_pods}}]
    policies: list[Obj] = [
        {
            # Rendezvous, validator and SST speak only to members of this network.
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{network}-members-only", namespace, labels),
            "spec": {
                "podSelector": {
                    "matchLabels": {names.NETWORK_LABEL: network},
                    "matchExpressions": [
                        {
                            "key": names.ROLE_LABEL,
                            "operator": "In",
                            "values": list(names.SINGLETON_ROLES),
                        }
                    ],
                },
                "policyTypes": ["Ingress"],
                "ingress": [{"from": from_members, "ports": [grpc]}, {"ports": [metrics, health]}],
            },
        },
        {
            # User nodes serve the public API on the same port; peers are checked by key.
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{network}-user-nodes", namespace, labels),
            "spec": {
                "podSelector": {"matchLabels": names.selector_labels(network, names.ROLE_USER)},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [grpc, metrics, health]}],
            },
        },
    ]
    if isinstance(spec.database, ManagedDatabase):
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta(f"{network}-postgres", namespace, labels),
                "spec": {
                    "podSelector": {"matchLabels": names.selector_labels(network, "postgres")},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            # the SST, and the backup and restore Jobs (backup.py)
                            "from": [
                                {"podSelector": {"matchLabels": names.selector_labels(network, r)}}
                                for r in (names.ROLE_SST, backup.ROLE)
                            ],
                            "ports": [{"port": names.PG_PORT, "protocol": "TCP"}],
                        }
                    ],
                },
            }
        )
    return policies


def _pod_monitor(network: str, namespace: str, spec: NetworkSpec, version: str) -> Obj:
    labels = names.labels(network, "monitoring", version)
    labels.update(spec.monitoring_labels)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(network, namespace, labels),
        "spec": {
            "selector": {
                "matchLabels": {names.NETWORK_LABEL: network},
                "matchExpressions": [
                    {
                        "key": names.ROLE_LABEL,
                        "operator": "In",
                        "values": [names.ROLE_USER, *names.SINGLETON_ROLES],
                    }
                ],
            },
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": spec.monitoring_interval,
                    # the target labels the chart's dashboards and alerts select on
                    "relabelings": [
                        {"sourceLabels": [_pod_label_meta(label)], "targetLabel": target}
                        for label, target in (
                            (names.NETWORK_LABEL, "network"),
                            (names.ROLE_LABEL, "role"),
                            (names.ZONE_LABEL, "zone"),
                        )
                    ],
                }
            ],
        },
    }


def _pod_label_meta(label: str) -> str:
    """Prometheus' discovery label for a pod label: every character outside [a-zA-Z0-9_] -> _."""
    return "__meta_kubernetes_pod_label_" + "".join(
        c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in label
    )
