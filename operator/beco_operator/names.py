"""Names, labels and constants shared by every part of the operator.

Every child of a BecoNetwork ``N`` is named ``N-<part>`` and carries the standard
``app.kubernetes.io`` labels plus ``beco.dev/network``; the selectors use only the
labels that never change for the life of an object (not the version).
"""

from __future__ import annotations

from typing import Any

from beco_node import settings

Obj = dict[str, Any]

GROUP = "beco.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BecoNetwork"
PLURAL = "beconetworks"

FIELD_MANAGER = "beco-operator"
MANAGED_BY = "beco-operator"

PORT = 9001
METRICS_PORT = 9100
# Plaintext grpc.health.v1 only (the kubelet's probes), even when PORT is mutual TLS.
HEALTH_PORT = 9002
LIVENESS_SERVICE = settings.LIVENESS_SERVICE  # the node defines it
PG_PORT = 5432

MEMBERSHIP_KEY = "membership.json"
CA_CERT_KEY = "ca.crt"
NODE_KEY = "node.key"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
MEMBERSHIP_DIR = "/etc/beco/membership"
KEY_DIR = "/etc/beco/key"

# Annotations the operator reads or writes.
ROTATE_KEYS_ANNOTATION = f"{GROUP}/rotate-keys"  # on the BecoNetwork: a request token
ROTATION_TOKEN_ANNOTATION = f"{GROUP}/rotation-token"  # on a key Secret: the request it answers
ROTATED_AT_ANNOTATION = f"{GROUP}/rotated-at"  # on a key Secret: when its key last changed
PEER_ID_ANNOTATION = f"{GROUP}/peer-id"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"  # on pod templates: what a restart must follow
APPLIED_HASH_ANNOTATION = f"{GROUP}/applied-hash"  # on children: the desired state last applied
KEY_HASH_ANNOTATION = f"{GROUP}/key-hash"  # on singleton pod templates: their key's version
PUBLISHED_AT_ANNOTATION = f"{GROUP}/published-at"  # on the membership: when its text last changed
RESTART_TOKEN_ANNOTATION = f"{GROUP}/restart-token"  # on pod templates: the restart they answer

NETWORK_LABEL = f"{GROUP}/network"
ZONE_LABEL = f"{GROUP}/zone"
MEMBER_LABEL = f"{GROUP}/member"
ROLE_LABEL = f"{GROUP}/role"
KEY_LABEL = f"{GROUP}/key"
TOPOLOGY_ZONE = "topology.kubernetes.io/zone"

ROLE_USER = "user"
ROLE_SST = "sst"
SINGLETON_ROLES = ("rendezvous", "validator", ROLE_SST)
# Roles a restart request names, in the order a whole-network restart takes them.
RESTART_ROLES = (*SINGLETON_ROLES, ROLE_USER)


def restart_annotation(role: str) -> str:
    """On the BecoNetwork: a restart request token for ``role``'s pods (``kubectl beco
    restart``); one annotation per role, so a request for one role never undoes another's."""
    return f"{GROUP}/restart-{role}"


def component(role: str) -> str:
    return "user-node" if role == ROLE_USER else role


def selector_labels(network: str, role: str, zone: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "beco",
        "app.kubernetes.io/instance": network,
        "app.kubernetes.io/component": component(role),
    }
    if zone is not None:
        labels[ZONE_LABEL] = zone
    return labels


def labels(network: str, role: str, version: str, zone: str | None = None) -> dict[str, str]:
    out = selector_labels(network, role, zone)
    out.update(
        {
            "app.kubernetes.io/part-of": "beco",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/version": version[:63],
            NETWORK_LABEL: network,
        }
    )
    if role in (ROLE_USER, *SINGLETON_ROLES):
        out[ROLE_LABEL] = role
    return out


def network_selector(network: str) -> str:
    """A label selector matching every child of one network."""
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{NETWORK_LABEL}={network}"


def user_sts(network: str, zone: str) -> str:
    return f"{network}-user-{zone}"


def user_member(network: str, zone: str, ordinal: int) -> str:
    """A user node's member name, which is also its pod's name."""
    return f"{user_sts(network, zone)}-{ordinal}"


def singleton(network: str, role: str) -> str:
    return f"{network}-{role}"


def key_secret(member: str) -> str:
    return f"{member}-key"


def ca_secret(network: str) -> str:
    return f"{network}-ca"


def client_tls_secret(network: str) -> str:
    return f"{network}-client-tls"


def membership_configmap(network: str) -> str:
    return f"{network}-membership"


def postgres(network: str) -> str:
    return f"{network}-postgres"


def postgres_service(network: str) -> str:
    """The Service the SST connects to: a cluster IP, so its DNS answer never changes when the
    Postgres pod is replaced (the headless ``postgres`` Service only names the pod)."""
    return f"{network}-database"


def service_host(service: str, namespace: str) -> str:
    """A Service's DNS name inside the cluster."""
    return f"{service}.{namespace}.svc"


def client_service(network: str) -> str:
    return network


#: The uid/gid of ``postgres`` in the official image's contract (and ours): every pod that
#: touches the database's files (the server, the backup and restore Jobs) runs as it.
POSTGRES_UID = 999


def postgres_pod_security() -> dict[str, Any]:
    """The pod securityContext of every pod running the Postgres image."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POSTGRES_UID,
        "runAsGroup": POSTGRES_UID,
        "fsGroup": POSTGRES_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
