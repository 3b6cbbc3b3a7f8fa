"""One reconcile of one BecoNetwork: observe, decide with the pure modules, write the difference.

Order matters for safety: keys first (created, never overwritten), then the
membership that publishes them, then the workloads that mount both; members'
keys are removed only once their pods are gone. Every write is preceded by a
read and a comparison, so a converged network costs reads only. Each decision
(a child created or changed, a key generated or rotated, a restart, a phase
change) is recorded as a Kubernetes Event on the BecoNetwork.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets as pysecrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from beco_node import keys

from beco_operator import (
    diff,
    keyring,
    membership_doc,
    metrics,
    names,
    render,
    rollout,
    status,
    tls,
)
from beco_operator.clock import Clock, stamp
from beco_operator.kube import Kube, path
from beco_operator.names import Obj
from beco_operator.spec import (
    DEFAULT_IMAGE,
    ExternalDatabase,
    ManagedDatabase,
    NetworkSpec,
    SpecError,
    parse,
)

log = logging.getLogger("beco_operator.reconcile")

# Kinds of children the operator prunes when the spec no longer asks for them.
PRUNABLE = ("StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy")


@dataclass
class Caps:
    """What the cluster offers, looked up now and then (not on every reconcile)."""

    pod_monitor: bool = False
    zones_with_nodes: frozenset[str] = frozenset()


@dataclass
class Result:
    status: Obj
    requeue_after: float | None = None
    writes: list[str] = field(default_factory=list)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if _meta(pod).get("deletionTimestamp"):
        return False
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _unschedulable(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return bool(c.get("reason") == "Unschedulable")
    return False


class Reconciler:
    def __init__(self, kube: Kube, clock: Clock, default_image: str = DEFAULT_IMAGE) -> None:
        self.kube = kube
        self.clock = clock
        self.default_image = default_image

    async def event(self, body: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        meta = _meta(body)
        now = stamp(self.clock())
        ev: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name')}.",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.MANAGED_BY},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(ev)
        except Exception as exc:  # an Event is best effort
            log.warning("could not post event %s: %s", reason, exc)

    async def write_status(self, body: Mapping[str, Any], new: Obj) -> bool:
        prev = body.get("status") or {}
        if prev == new:
            return False
        meta = _meta(body)
        # Merge patch: drop fields we no longer set by writing them as null.
        patch: Obj = {k: None for k in prev if k not in new}
        patch.update(new)
        await self.kube.patch_status(names.KIND, str(meta["namespace"]), str(meta["name"]), patch)
        if prev.get("phase") != new.get("phase"):
            ready = next((c for c in new.get("conditions", []) if c["type"] == status.READY), None)
            why = f": {ready['message']}" if ready and ready["status"] != "True" else ""
            etype = "Normal" if new.get("phase") in ("Ready", "Progressing") else "Warning"
            await self.event(
                body, etype, f"Phase{new.get('phase')}", f"phase {new.get('phase')}{why}"
            )
        return True

    async def reconcile(self, body: Mapping[str, Any], caps: Caps) -> Result:
        meta = _meta(body)
        ns, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        prev_status: Mapping[str, Any] = body.get("status") or {}
        now = self.clock()
        try:
            spec = parse(body.get("spec") or {}, self.default_image)
        except SpecError as exc:
            new = status.failed(generation, "InvalidSpec", str(exc), prev_status, now)
            if await self.write_status(body, new):
                await self.event(body, "Warning", "InvalidSpec", str(exc))
            return Result(new)

        owner = render.owner_reference(name, uid)
        result = Result({})
        slots = keyring.desired_slots(name, ns, spec)
        token = str((meta.get("annotations") or {}).get(names.ROTATE_KEYS_ANNOTATION, ""))

        # 0. The network's transport CA and the application client certificate: created once.
        ca_cert, ca_key = await self._ca(body, ns, name, owner, spec, now)

        def tls_for(slot: keyring.Slot) -> tuple[bytes, bytes]:
            return tls.issue(
                ca_cert, ca_key, slot.name, tls.dns_names(slot.host, slot.service(name), ns), now
            )

        # 1. Keys: create what is missing; never overwrite.
        secret_sel = f"{names.network_selector(name)},{names.KEY_LABEL}=node"
        key_secrets = {
            str(_meta(s)["name"]): s for s in await self.kube.list(path("Secret", ns), secret_sel)
        }
        kplan = keyring.plan(slots, key_secrets.values())
        for slot in kplan.create:
            obj = keyring.key_secret(
                name, ns, slot, spec.image_tag, token, now, tls_pair=tls_for(slot)
            )
            obj["metadata"]["ownerReferences"] = [owner]
            created = await self.kube.create(obj)
            if created is None:  # created concurrently (e.g. by a previous operator run)
                created = await self.kube.get(path("Secret", ns, obj["metadata"]["name"]))
            else:
                metrics.KEYS_GENERATED.labels("new-member").inc()
                await self.event(
                    body, "Normal", "KeyGenerated", f"generated the peer key of {slot.name}"
                )
            if created is not None:
                key_secrets[str(created["metadata"]["name"])] = created

        # 2. Managed database credentials: created once, kept as long as the data volume.
        if isinstance(spec.database, ManagedDatabase):
            await self._database_secret(body, ns, name, owner, spec, spec.database)

        # 3. Membership.
        public_keys: dict[str, bytes] = {}
        key_problems: list[str] = []
        for slot in slots:
            sec = key_secrets.get(names.key_secret(slot.name))
            if sec is None:
                key_problems.append(f"no key Secret for {slot.name}")
                continue
            try:
                public_keys[slot.name] = keyring.public_key(sec)
            except keys.KeyError_ as exc:
                key_problems.append(f"{names.key_secret(slot.name)}: {exc}")
        cm_name = names.membership_configmap(name)
        cm = await self.kube.get(path("ConfigMap", ns, cm_name))
        membership_gen = 0
        if not key_problems:
            previous = ((cm or {}).get("data") or {}).get(names.MEMBERSHIP_KEY)
            text, membership_gen = membership_doc.build_text(
                name, spec.quorum, slots, public_keys, previous
            )
            want_cm = membership_doc.configmap(name, ns, spec.image_tag, text, ca_cert.decode())
            want_cm["metadata"]["ownerReferences"] = [owner]
            want_cm = diff.with_hash(want_cm)
            if diff.needs_apply(want_cm, cm):
                await self.kube.apply(want_cm)
                result.writes.append(f"ConfigMap/{cm_name}")
                await self.event(
                    body,
                    "Normal",
                    "MembershipPublished",
                    f"membership generation {membership_gen}: {spec.members} user nodes, quorum {spec.quorum}",
                )

        # 4. Workloads and the rest.
        singleton_hashes = {
            role: keyring.key_hash(key_secrets[names.key_secret(names.singleton(name, role))])
            for role in names.SINGLETON_ROLES
            if names.key_secret(names.singleton(name, role)) in key_secrets
        }
        desired = [
            diff.with_hash(o)
            for o in render.render(
                name,
                ns,
                uid,
                spec,
                singleton_key_hashes=singleton_hashes,
                pod_monitor=caps.pod_monitor,
            )
        ]
        wanted_names = {(o["kind"], o["metadata"]["name"]) for o in desired}
        current = await asyncio.gather(
            *(self.kube.get(path(o["kind"], ns, o["metadata"]["name"])) for o in desired)
        )
        for obj, have in zip(desired, current, strict=True):
            if diff.must_recreate(obj, have):
                assert have is not None
                hm = _meta(have)
                await self.kube.delete(obj["kind"], ns, str(hm["name"]), uid=str(hm.get("uid")))
                have = None
            if diff.needs_apply(obj, have):
                await self.kube.apply(obj)
                result.writes.append(f"{obj['kind']}/{obj['metadata']['name']}")
        if result.writes:
            verb = "applied"
            await self.event(
                body, "Normal", "ChildrenApplied", f"{verb} {', '.join(result.writes)}"
            )

        # 5. Prune children the spec no longer asks for.
        for kind in PRUNABLE + (("PodMonitor",) if caps.pod_monitor else ()):
            for obj in await self.kube.list(path(kind, ns), names.network_selector(name)):
                om = _meta(obj)
                if (kind, om.get("name")) in wanted_names:
                    continue
                if not any(o.get("uid") == uid for o in om.get("ownerReferences") or []):
                    continue
                if await self.kube.delete(kind, ns, str(om["name"]), uid=str(om.get("uid"))):
                    await self.event(body, "Normal", "ChildRemoved", f"removed {kind}/{om['name']}")

        # 6. Pods: rollout, key rotation, readiness.
        pods = await self.kube.list(path("Pod", ns), names.network_selector(name))
        by_name = {str(_meta(p)["name"]): p for p in pods}
        user_members = [s.name for s in slots if s.role == names.ROLE_USER]
        user_zone = {s.name: s.zone for s in slots if s.role == names.ROLE_USER}
        views = {
            m: rollout.PodView(
                name=m,
                ready=_pod_ready(by_name[m]),
                terminating=bool(_meta(by_name[m]).get("deletionTimestamp")),
                config_hash=str(
                    (_meta(by_name[m]).get("annotations") or {}).get(
                        names.CONFIG_HASH_ANNOTATION, ""
                    )
                ),
                created=str(_meta(by_name[m]).get("creationTimestamp", "")),
            )
            for m in user_members
            if m in by_name
        }
        want_hash = {
            m: render.config_hash(name, names.ROLE_USER, spec, user_zone[m], spec.user_resources)
            for m in user_members
        }
        rotated = {
            m: keyring.rotated_at(key_secrets[names.key_secret(m)])
            for m in user_members
            if names.key_secret(m) in key_secrets
        }
        decision = rollout.decide(user_members, views, want_hash, rotated, spec.quorum)
        if decision.delete is not None:
            pod = by_name[decision.delete]
            why = (
                "key"
                if views[decision.delete].config_hash == want_hash[decision.delete]
                else "config"
            )
            if await self.kube.delete("Pod", ns, decision.delete, uid=str(_meta(pod).get("uid"))):
                metrics.RESTARTS.labels(why).inc()
                await self.event(body, "Normal", "UserNodeRestarted", decision.reason)
            result.requeue_after = 1.0
        elif decision.waiting:
            await self._note_waiting(body, prev_status, decision.reason)

        # Key rotation, one member at a time, under the same guard.
        rotating = ""
        if token and not decision.pending and not key_problems:
            todo = keyring.rotation_candidates(slots, key_secrets, token)
            if todo:
                slot = todo[0]
                rotating = f"rotating keys: {len(todo)} member(s) left"
                ok, why = (True, "")
                if slot.role == names.ROLE_USER:
                    ok, why = rollout.may_disrupt_one(user_members, views, spec.quorum)
                if ok:
                    await self._rotate(
                        body,
                        slot,
                        key_secrets[names.key_secret(slot.name)],
                        spec,
                        token,
                        tls_for(slot),
                    )
                    result.requeue_after = 0.5
                else:
                    decision = rollout.Decision(
                        None, True, f"key rotation of {slot.name}: {why}", len(todo)
                    )
                    await self._note_waiting(body, prev_status, decision.reason)

        # 7. Keys of members that left, once their pods are gone.
        for sname in kplan.delete:
            member = sname.removesuffix("-key")
            if member in by_name:
                continue
            sec = key_secrets.get(sname)
            if sec is not None and await self.kube.delete(
                "Secret", ns, sname, uid=str(_meta(sec).get("uid"))
            ):
                await self.event(
                    body, "Normal", "KeyRemoved", f"removed the key of departed member {member}"
                )

        # 8. Status.
        ready_by_zone: dict[str, int] = {z: 0 for z in spec.zones}
        for m in user_members:
            if m in views and views[m].ready:
                ready_by_zone[user_zone[m]] += 1
        singles = {
            role: any(
                _pod_ready(p) and (_meta(p).get("labels") or {}).get(names.ROLE_LABEL) == role
                for p in pods
            )
            for role in names.SINGLETON_ROLES
        }
        db_ready, db_msg = await self._database(ns, name, spec, pods)
        keys_msg = "; ".join(key_problems) or (
            f"{len(slots)} peer keys published in membership generation {membership_gen}"
            + (f"; {rotating}" if rotating else "")
        )
        obs = status.Observed(
            zones=spec.zones,
            per_zone=spec.per_zone,
            quorum=spec.quorum,
            members=spec.members,
            ready_by_zone=ready_by_zone,
            singletons_ready=singles,
            database_ready=db_ready,
            database_message=db_msg,
            keys_ok=not key_problems and not rotating,
            keys_message=keys_msg,
            membership_generation=membership_gen,
            endpoint=f"{names.client_service(name)}.{ns}.svc:{spec.service_port}",
            selector=",".join(
                f"{k}={v}" for k, v in names.selector_labels(name, names.ROLE_USER).items()
            ),
            zones_without_nodes=[z for z in spec.zones if z not in caps.zones_with_nodes],
            unschedulable=sorted(str(_meta(p)["name"]) for p in pods if _unschedulable(p)),
            rollout_pending=decision.pending,
            rollout_waiting=decision.waiting,
            rollout_reason=decision.reason if decision.waiting else "",
        )
        metrics.ROLLOUT_WAITING.labels(ns, name).set(1 if decision.waiting else 0)
        metrics.ROLLOUT_PENDING.labels(ns, name).set(decision.pending)
        new = status.compute(generation, obs, prev_status, now)
        await self.write_status(body, new)
        result.status = new
        if result.requeue_after is None and new["phase"] != "Ready":
            result.requeue_after = 5.0
        return result

    async def _note_waiting(
        self, body: Mapping[str, Any], prev: Mapping[str, Any], reason: str
    ) -> None:
        if (prev.get("rollout") or {}).get("reason") != reason:
            await self.event(body, "Normal", "RolloutWaiting", reason)

    async def _rotate(
        self,
        body: Mapping[str, Any],
        slot: keyring.Slot,
        secret: Obj,
        spec: NetworkSpec,
        token: str,
        tls_pair: tuple[bytes, bytes],
    ) -> None:
        meta0 = _meta(body)
        fresh = keyring.key_secret(
            str(meta0["name"]),
            str(meta0["namespace"]),
            slot,
            spec.image_tag,
            token,
            self.clock(),
            tls_pair=tls_pair,
            rotated=True,
        )
        replaced = dict(secret)
        replaced.update(apiVersion="v1", kind="Secret")  # list items carry neither
        meta = dict(secret["metadata"])
        ann = dict(meta.get("annotations") or {})
        ann.update(fresh["metadata"]["annotations"])
        meta["annotations"] = ann
        replaced["metadata"] = meta
        replaced["data"] = fresh["data"]
        await self.kube.replace(replaced)  # resourceVersion guards against a concurrent change
        metrics.KEYS_GENERATED.labels("rotation").inc()
        await self.event(body, "Normal", "KeyRotated", f"rotated the peer key of {slot.name}")

    async def _ca(
        self,
        body: Mapping[str, Any],
        ns: str,
        network: str,
        owner: Obj,
        spec: NetworkSpec,
        now: datetime,
    ) -> tuple[bytes, bytes]:
        """The network CA (certificate, key), created on first use and then only read."""
        ca_name = names.ca_secret(network)
        sec = await self.kube.get(path("Secret", ns, ca_name))
        if sec is None:
            cert, key = tls.make_ca(network, ns, now)
            obj: Obj = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": ca_name,
                    "namespace": ns,
                    "labels": names.labels(network, "ca", spec.image_tag),
                    "ownerReferences": [owner],
                },
                "data": {names.CA_CERT_KEY: _b64(cert), names.TLS_KEY_KEY: _b64(key)},
            }
            created = await self.kube.create(obj)
            sec = created or await self.kube.get(path("Secret", ns, ca_name))
            if created is not None:
                await self.event(body, "Normal", "CertificateAuthority", "created the network CA")
        if sec is None:
            raise RuntimeError(f"the CA Secret {ca_name} vanished")
        data = sec.get("data") or {}
        cert = base64.b64decode(str(data.get(names.CA_CERT_KEY, "")))
        key = base64.b64decode(str(data.get(names.TLS_KEY_KEY, "")))
        client_name = names.client_tls_secret(network)
        if await self.kube.get(path("Secret", ns, client_name)) is None:
            ccert, ckey = tls.issue(cert, key, f"{network}-client", [], now)
            await self.kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {
                        "name": client_name,
                        "namespace": ns,
                        "labels": names.labels(network, "client-tls", spec.image_tag),
                        "ownerReferences": [owner],
                    },
                    "data": {
                        "tls.crt": _b64(ccert),
                        "tls.key": _b64(ckey),
                        names.CA_CERT_KEY: _b64(cert),
                    },
                }
            )
        return cert, key

    async def _database_secret(
        self,
        body: Mapping[str, Any],
        ns: str,
        network: str,
        owner: Obj,
        spec: NetworkSpec,
        db: ManagedDatabase,
    ) -> None:
        """The Postgres password, created once; owned by the network only if its volume is.

        A retained data volume keeps the password it was initialised with, so a network
        re-created with the same name must find that password again: with
        ``reclaimPolicy: Retain`` the Secret is not owned and survives the network, like the
        volume claim; with ``Delete`` both go with the network.
        """
        owners = render.postgres_secret_owners(db, owner)
        sec_name = names.postgres(network)
        have = await self.kube.get(path("Secret", ns, sec_name))
        if have is None:
            pg = render.postgres_secret(network, ns, spec.image_tag, pysecrets.token_urlsafe(24))
            if owners:
                pg["metadata"]["ownerReferences"] = owners
            if await self.kube.create(pg) is not None:
                await self.event(
                    body, "Normal", "DatabaseCredentials", "generated the Postgres password"
                )
            return
        if (_meta(have).get("ownerReferences") or []) != owners:
            # Only the ownership changes (the reclaim policy changed, or a retained Secret is
            # found again): the password itself is never rewritten.
            replaced = {**have, "apiVersion": "v1", "kind": "Secret"}
            replaced["metadata"] = {**_meta(have), "ownerReferences": owners}
            await self.kube.replace(replaced)
            if not owners:
                await self.event(
                    body,
                    "Normal",
                    "DatabaseCredentials",
                    f"the Postgres password Secret {sec_name} is kept with the retained volume",
                )
            else:
                await self.event(
                    body,
                    "Normal",
                    "DatabaseCredentials",
                    f"the Postgres password Secret {sec_name} now goes with the network",
                )

    async def _database(
        self, ns: str, network: str, spec: NetworkSpec, pods: Sequence[Mapping[str, Any]]
    ) -> tuple[bool, str]:
        sst_ready = any(
            _pod_ready(p) and (_meta(p).get("labels") or {}).get(names.ROLE_LABEL) == "sst"
            for p in pods
        )
        if isinstance(spec.database, ExternalDatabase):
            ref = spec.database
            sec = await self.kube.get(path("Secret", ns, ref.secret_name))
            problem = ""
            if sec is None:
                problem = f"the database Secret {ref.secret_name} does not exist"
            elif ref.secret_key not in (sec.get("data") or {}):
                problem = f"the database Secret {ref.secret_name} has no key {ref.secret_key!r}"
            return status.database(
                managed=False,
                where=ref.secret_name,
                problem=problem,
                postgres_ready=None,
                sst_ready=sst_ready,
            )
        pg = f"{names.postgres(network)}-0"
        pg_pod = next((p for p in pods if _meta(p).get("name") == pg), None)
        return status.database(
            managed=True,
            where=pg,
            problem="",
            postgres_ready=None if pg_pod is None else _pod_ready(pg_pod),
            sst_ready=sst_ready,
        )
