"""Peer keys: one Ed25519 key per member, each in its own Secret.

A key is generated once, when its member first appears, and created with a
plain POST: an existing Secret is never overwritten, so a restarted operator or
a repeated reconcile can never churn keys. A key changes only on request
(rotation, see :func:`rotation_candidates` and :func:`rotated_secret`) and disappears
with its member. The SST's key is the exception: it is the log's identity (as an RFC 9162
log's key is), so it lives as long as the log (:func:`follows_log`) and a rotation renews
only its TLS certificate. Pure: the caller does the API calls.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from beco_node import keys

from beco_operator import names
from beco_operator.names import Obj
from beco_operator.spec import NetworkSpec


@dataclass(frozen=True, slots=True)
class Slot:
    """A member the spec asks for: its name, role, zone and DNS address."""

    name: str
    role: str
    zone: str
    address: str

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    def service(self, network: str) -> str:
        """The Service clients reach this member by (for its certificate's names)."""
        return names.client_service(network) if self.role == names.ROLE_USER else self.name


def desired_slots(network: str, namespace: str, spec: NetworkSpec) -> list[Slot]:
    slots = [
        Slot(
            names.singleton(network, role),
            role,
            "",
            f"{names.singleton(network, role)}.{namespace}.svc:{names.PORT}",
        )
        for role in names.SINGLETON_ROLES
    ]
    for zone in spec.zones:
        sts = names.user_sts(network, zone)
        for i in range(spec.per_zone):
            member = names.user_member(network, zone, i)
            slots.append(
                Slot(member, names.ROLE_USER, zone, f"{member}.{sts}.{namespace}.svc:{names.PORT}")
            )
    return slots


def follows_log(slot: Slot) -> bool:
    """Whether ``slot``'s key lives as long as the SST's log rather than as the network.

    The SST signs every tree head with its key and refuses, on start, a log whose latest head
    another key signed: the key is the log's identity, which every saved head and proof a
    client holds is checked against. So its key Secret is owned as :func:`render.log_owners`
    says, and a rotation keeps it (:func:`rotated_secret`).
    """
    return slot.role == names.ROLE_SST


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_secret(
    network: str,
    namespace: str,
    slot: Slot,
    version: str,
    token: str,
    now: datetime,
    pem: bytes | None = None,
    *,
    tls_pair: tuple[bytes, bytes] | None = None,
    rotated: bool = False,
) -> Obj:
    """A key Secret for ``slot`` holding a fresh key (or ``pem``).

    ``rotated`` marks a replacement key: its time tells which pods still run the old one.
    """
    pem = pem if pem is not None else keys.private_key_to_pem(keys.generate_private_key())
    pub = keys.public_key_bytes(keys.private_key_from_pem(pem))
    labels = names.labels(network, slot.role, version, slot.zone or None)
    labels[names.MEMBER_LABEL] = slot.name
    labels[names.KEY_LABEL] = "node"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.key_secret(slot.name),
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                names.PEER_ID_ANNOTATION: keys.peer_id(pub),
                names.ROTATION_TOKEN_ANNOTATION: token,
                **(
                    {names.ROTATED_AT_ANNOTATION: now.strftime("%Y-%m-%dT%H:%M:%SZ")}
                    if rotated
                    else {}
                ),
            },
        },
        "data": {
            names.NODE_KEY: _b64(pem),
            "public_key": _b64(pub),
            **(
                {names.TLS_CERT_KEY: _b64(tls_pair[0]), names.TLS_KEY_KEY: _b64(tls_pair[1])}
                if tls_pair
                else {}
            ),
        },
    }


def public_key(secret: Mapping[str, object]) -> bytes:
    """The raw public key of the private key a key Secret holds."""
    data = secret.get("data")
    if not isinstance(data, Mapping) or names.NODE_KEY not in data:
        raise keys.KeyError_(f"Secret lacks the key {names.NODE_KEY!r}")
    pem = base64.b64decode(str(data[names.NODE_KEY]))
    return keys.public_key_bytes(keys.private_key_from_pem(pem))


def key_hash(secret: Mapping[str, object]) -> str:
    """A short fingerprint of what a key Secret gives its pod (the key and its certificate),
    for pod-template annotations: a renewed certificate restarts the pod like a new key."""
    data = secret.get("data")
    if not isinstance(data, Mapping):
        return hashlib.sha256(b"").hexdigest()[:16]
    raw = str(data.get(names.NODE_KEY, "")) + str(data.get(names.TLS_CERT_KEY, ""))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _annotation(obj: Mapping[str, object], key: str) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ""
    ann = meta.get("annotations")
    return str(ann.get(key, "")) if isinstance(ann, Mapping) else ""


def rotated_secret(
    network: str,
    namespace: str,
    slot: Slot,
    secret: Mapping[str, object],
    version: str,
    token: str,
    now: datetime,
    tls_pair: tuple[bytes, bytes] | None,
) -> Obj:
    """``secret`` (as read) rotated for the request ``token``: a fresh key and certificate,
    except that a member whose key follows the log (the SST) keeps its key and gets only the
    new certificate. Other metadata (owners, resourceVersion) is kept as read."""
    keep: bytes | None = None
    if follows_log(slot):
        data = secret.get("data")
        if not isinstance(data, Mapping) or names.NODE_KEY not in data:
            raise keys.KeyError_(f"Secret lacks the key {names.NODE_KEY!r}")
        keep = base64.b64decode(str(data[names.NODE_KEY]))
    fresh = key_secret(
        network, namespace, slot, version, token, now, keep, tls_pair=tls_pair, rotated=True
    )
    meta = secret.get("metadata")
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    ann = meta.get("annotations")
    meta["annotations"] = {
        **(dict(ann) if isinstance(ann, Mapping) else {}),
        **fresh["metadata"]["annotations"],
    }
    # list items carry neither apiVersion nor kind
    return {**secret, "apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": fresh["data"]}


def rotation_token(secret: Mapping[str, object]) -> str:
    return _annotation(secret, names.ROTATION_TOKEN_ANNOTATION)


def rotated_at(secret: Mapping[str, object]) -> str:
    return _annotation(secret, names.ROTATED_AT_ANNOTATION)


@dataclass(frozen=True, slots=True)
class KeyPlan:
    create: list[Slot]
    delete: list[str]  # Secret names of members that left


def plan(slots: Sequence[Slot], existing: Iterable[Mapping[str, object]]) -> KeyPlan:
    """Which key Secrets to create and which to delete; existing keys are kept as they are."""
    have: set[str] = set()
    for s in existing:
        meta = s.get("metadata")
        if isinstance(meta, Mapping):
            have.add(str(meta.get("name")))
    want = {names.key_secret(s.name) for s in slots}
    return KeyPlan(
        create=[s for s in slots if names.key_secret(s.name) not in have],
        delete=sorted(have - want),
    )


def rotation_candidates(
    slots: Sequence[Slot], secrets: Mapping[str, Mapping[str, object]], token: str
) -> list[Slot]:
    """Members whose key has not yet been rotated for the request ``token`` (in slot order)."""
    if not token:
        return []
    return [
        s
        for s in slots
        if names.key_secret(s.name) in secrets
        and rotation_token(secrets[names.key_secret(s.name)]) != token
    ]
