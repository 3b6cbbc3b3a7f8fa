"""One reconcile of one BecoNetwork: observe, decide with the pure modules, write the difference.

:meth:`Reconciler.reconcile` runs named phases in order (CA, keys, database secret,
observe, membership, children, prune, rollout, rotation, departed keys, status); each
reads what it needs, asks a pure module (keyring, membership_doc, propagation, render,
diff, rollout, status) what to do, and writes the difference. Order matters for safety:
keys first (created, never overwritten), then the membership that publishes them, then
the workloads that mount both; departing members keep running until the smaller
membership has reached every pod, and their keys go only once their pods are gone. Every write is preceded by a
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

from beco_node import keys, membership

from beco_operator import (
    backup,
    diff,
    keyring,
    kinds,
    membership_doc,
    metrics,
    names,
    observe,
    propagation,
    render,
    restart,
    rollout,
    status,
    tls,
)
from beco_operator.clock import Clock, stamp
from beco_operator.config import OperatorConfig
from beco_operator.kube import Kube, path
from beco_operator.names import Obj
from beco_operator.podmetrics import GenerationReader, NoPodMetrics
from beco_operator.spec import (
    ExternalDatabase,
    ManagedDatabase,
    NetworkSpec,
    SpecError,
    parse,
)

log = logging.getLogger("beco_operator.reconcile")


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


_meta = observe.meta
_pod_ready = observe.pod_ready
_unschedulable = observe.unschedulable


def _load(text: str | None) -> membership.Membership | None:
    if not text:
        return None
    try:
        return membership.loads(text)
    except membership.MembershipError:
        return None


@dataclass
class Pass:
    """One reconcile of one network: what each phase learned, for the phases after it."""

    body: Mapping[str, Any]
    ns: str
    name: str
    uid: str
    generation: int
    prev_status: Mapping[str, Any]
    now: datetime
    spec: NetworkSpec
    caps: Caps
    owner: Obj
    slots: list[keyring.Slot]
    token: str
    result: Result = field(default_factory=lambda: Result({}))
    ca_cert: bytes = b""
    ca_key: bytes = b""
    key_secrets: dict[str, Obj] = field(default_factory=dict)
    key_plan: keyring.KeyPlan = field(default_factory=lambda: keyring.KeyPlan([], []))
    public_keys: dict[str, bytes] = field(default_factory=dict)
    key_problems: list[str] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    by_name: dict[str, Obj] = field(default_factory=dict)
    user_members: list[str] = field(default_factory=list)
    user_zone: dict[str, str] = field(default_factory=dict)
    views: dict[str, rollout.PodView] = field(default_factory=dict)
    membership_gen: int = 0
    published_at: str = ""
    publish_hold: str = ""
    spread: propagation.Propagation = field(
        default_factory=lambda: propagation.Propagation(True, "")
    )
    user_replicas: dict[str, int] = field(default_factory=dict)
    keep_departing: bool = False
    wanted: set[tuple[str, str]] = field(default_factory=set)
    want_hash: dict[str, str] = field(default_factory=dict)
    decision: rollout.Decision = field(default_factory=lambda: rollout.Decision(None, False, "", 0))
    rotating: str = ""
    restart_tokens: dict[str, str] = field(default_factory=dict)
    restart_progress: list[dict[str, str]] = field(default_factory=list)
    restart_admitted: list[str] = field(default_factory=list)  # roles whose restart starts now
    restore: backup.Gate | None = None  # spec.restore: what the restore phase decided
    restore_pem: bytes | None = None  # the backup's SST key, once the restore succeeded


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        clock: Clock,
        config: OperatorConfig | None = None,
        pod_metrics: GenerationReader | None = None,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.config = config or OperatorConfig()
        self.pod_metrics: GenerationReader = pod_metrics or NoPodMetrics()

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
        generation = int(meta.get("generation") or 0)
        prev_status: Mapping[str, Any] = body.get("status") or {}
        now = self.clock()
        try:
            spec = parse(body.get("spec") or {}, self.config.node_image)
        except SpecError as exc:
            new = status.failed(generation, "InvalidSpec", str(exc), prev_status, now)
            if await self.write_status(body, new):
                await self.event(body, "Warning", "InvalidSpec", str(exc))
            return Result(new)
        ns, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        p = Pass(
            body=body,
            ns=ns,
            name=name,
            uid=uid,
            generation=generation,
            prev_status=prev_status,
            now=now,
            spec=spec,
            caps=caps,
            owner=render.owner_reference(name, uid),
            slots=keyring.desired_slots(name, ns, spec),
            token=str((meta.get("annotations") or {}).get(names.ROTATE_KEYS_ANNOTATION, "")),
        )
        await self._phase_ca(p)
        await self._phase_restore(p)
        await self._phase_keys(p)
        await self._phase_database_secret(p)
        await self._phase_observe(p)
        await self._phase_membership(p)
        await self._phase_children(p)
        await self._phase_prune(p)
        await self._phase_rollout(p)
        await self._phase_rotation(p)
        await self._phase_departed_keys(p)
        return await self._phase_status(p)

    # ---- phases, in order ----------------------------------------------------------------

    async def _phase_ca(self, p: Pass) -> None:
        """The network's transport CA and the application client certificate: created once."""
        p.ca_cert, p.ca_key = await self._ca(p.body, p.ns, p.name, p.owner, p.spec, p.now)

    def _tls_for(self, p: Pass, slot: keyring.Slot) -> tuple[bytes, bytes]:
        return tls.issue(
            p.ca_cert,
            p.ca_key,
            slot.name,
            tls.dns_names(slot.host, slot.service(p.name), p.ns),
            p.now,
        )

    async def _phase_restore(self, p: Pass) -> None:
        """``spec.restore``: the restore Job runs before the SST may start (backup.gate)."""
        r = p.spec.restore
        if r is None or not isinstance(p.spec.database, ManagedDatabase):
            return
        job_name = backup.restore_job_name(p.name)
        job = await self.kube.get(path("Job", p.ns, job_name))
        if job is not None and not any(
            o.get("uid") == p.uid for o in _meta(job).get("ownerReferences") or []
        ):
            # left by an earlier network of this name (deleted with --cascade=orphan): its
            # outcome says nothing about this network's database
            await self.kube.delete("Job", p.ns, job_name, uid=str(_meta(job).get("uid")))
            job = None
        state = None
        if job is not None:
            pods = await self.kube.list(path("Pod", p.ns), f"{backup.BACKUP_LABEL}={job_name}")
            state = backup.job_state(job, pods)
        key = await self.kube.get(path("Secret", p.ns, r.key_secret))
        before = any(
            c.get("type") == backup.RESTORED and c.get("status") == "True"
            for c in p.prev_status.get("conditions") or []
        )
        g = backup.gate(
            r.pvc, r.path, previously_restored=before, key_present=key is not None, job=state
        )
        if g.create_job:
            obj = backup.restore_job(
                p.name, p.ns, r.pvc, r.path, p.spec.database.image, p.spec.image_tag, p.owner
            )
            if await self.kube.create(obj) is not None:
                await self.event(p.body, "Normal", "RestoreStarted", g.message)
        if key is not None:
            raw = str((key.get("data") or {}).get(names.NODE_KEY, ""))
            p.restore_pem = base64.b64decode(raw) if raw else None
        p.restore = g
        if g.hold_sst:
            p.result.requeue_after = 2.0

    def _held_by_restore(self, p: Pass, slot: keyring.Slot) -> bool:
        """A restored SST's key is the backup's, never a fresh one: without it, none."""
        return keyring.follows_log(slot) and p.restore is not None and p.restore_pem is None

    async def _restored_key(self, p: Pass, slot: keyring.Slot, sec: Obj) -> Obj:
        """After a restore the SST signs with the key that signed the restored log (a key
        Secret kept from before is replaced only once the restore succeeded: until then it
        may belong to a log the restore refuses to overwrite)."""
        if p.restore is None or not p.restore.done or p.restore_pem is None:
            return sec
        if not keyring.follows_log(slot):
            return sec
        want = keys.public_key_bytes(keys.private_key_from_pem(p.restore_pem))
        try:
            if keyring.public_key(sec) == want:
                return sec
        except keys.KeyError_:
            pass
        replaced = {**sec, "apiVersion": "v1", "kind": "Secret"}
        data = dict(sec.get("data") or {})
        data[names.NODE_KEY] = _b64(p.restore_pem)
        data["public_key"] = _b64(want)
        replaced["data"] = data
        out = await self.kube.replace(replaced)
        await self.event(
            p.body,
            "Normal",
            "RestoredKey",
            f"the SST key of {slot.name} is the backup's: it signed the restored log",
        )
        return out

    async def _phase_keys(self, p: Pass) -> None:
        """Peer keys: create what is missing, never overwrite; then read every public key."""
        secret_sel = f"{names.network_selector(p.name)},{names.KEY_LABEL}=node"
        p.key_secrets = {
            str(_meta(s)["name"]): s for s in await self.kube.list(path("Secret", p.ns), secret_sel)
        }
        p.key_plan = keyring.plan(p.slots, p.key_secrets.values())
        for slot in p.key_plan.create:
            if self._held_by_restore(p, slot):
                continue
            from_backup = keyring.follows_log(slot) and p.restore is not None
            obj = keyring.key_secret(
                p.name,
                p.ns,
                slot,
                p.spec.image_tag,
                p.token,
                p.now,
                p.restore_pem if from_backup else None,
                tls_pair=self._tls_for(p, slot),
            )
            obj["metadata"]["ownerReferences"] = self._key_owners(p, slot)
            created = await self.kube.create(obj)
            if created is None:  # created concurrently (e.g. by a previous operator run)
                created = await self.kube.get(path("Secret", p.ns, obj["metadata"]["name"]))
            else:
                metrics.KEYS_GENERATED.labels("new-member").inc()
                await self.event(
                    p.body, "Normal", "KeyGenerated", f"generated the peer key of {slot.name}"
                )
            if created is not None:
                p.key_secrets[str(created["metadata"]["name"])] = created
        for slot in p.slots:
            sec = p.key_secrets.get(names.key_secret(slot.name))
            if sec is None and self._held_by_restore(p, slot):
                p.key_problems.append(f"the key of {slot.name} comes from the backup's key Secret")
                continue
            if sec is None:
                p.key_problems.append(f"no key Secret for {slot.name}")
                continue
            sec = p.key_secrets[names.key_secret(slot.name)] = await self._restored_key(
                p, slot, sec
            )
            if keyring.follows_log(slot):
                kept = await self._own(
                    p.body, sec, self._key_owners(p, slot), f"the key Secret of {slot.name}"
                )
                sec = p.key_secrets[names.key_secret(slot.name)] = kept
            try:
                p.public_keys[slot.name] = keyring.public_key(sec)
            except keys.KeyError_ as exc:
                p.key_problems.append(f"{names.key_secret(slot.name)}: {exc}")

    @staticmethod
    def _key_owners(p: Pass, slot: keyring.Slot) -> list[Obj]:
        return (
            render.log_owners(p.spec.database, p.owner) if keyring.follows_log(slot) else [p.owner]
        )

    async def _own(self, body: Mapping[str, Any], sec: Obj, owners: list[Obj], what: str) -> Obj:
        """Give an existing Secret ``owners`` (the reclaim policy changed, or a Secret kept
        with a retained log is found again); its data is never rewritten."""
        if (_meta(sec).get("ownerReferences") or []) == owners:
            return sec
        replaced = {**sec, "apiVersion": "v1", "kind": "Secret"}
        replaced["metadata"] = {**_meta(sec), "ownerReferences": owners}
        out = await self.kube.replace(replaced)
        if owners:
            msg = f"{what} ({_meta(sec).get('name')}) now goes with the network"
        else:
            msg = f"{what} ({_meta(sec).get('name')}) is kept with the retained log"
        await self.event(body, "Normal", "Retention", msg)
        return out

    async def _phase_database_secret(self, p: Pass) -> None:
        """Managed database credentials: created once, kept as long as the data volume."""
        if isinstance(p.spec.database, ManagedDatabase):
            await self._database_secret(p.body, p.ns, p.name, p.owner, p.spec, p.spec.database)

    async def _phase_observe(self, p: Pass) -> None:
        """The network's pods, as the membership, rollout and status phases see them."""
        p.pods = await self.kube.list(path("Pod", p.ns), names.network_selector(p.name))
        p.by_name = {str(_meta(x)["name"]): x for x in p.pods}
        p.user_members = [s.name for s in p.slots if s.role == names.ROLE_USER]
        p.user_zone = {s.name: s.zone for s in p.slots if s.role == names.ROLE_USER}
        p.views = {m: observe.pod_view(p.by_name[m]) for m in p.user_members if m in p.by_name}

    async def _phase_membership(self, p: Pass) -> None:
        """Publish the membership (quorum-safely) and learn how far it has propagated."""
        cm_name = names.membership_configmap(p.name)
        cm = await self.kube.get(path("ConfigMap", p.ns, cm_name))
        previous = ((cm or {}).get("data") or {}).get(names.MEMBERSHIP_KEY)
        prev_at = observe.annotation(cm or {}, names.PUBLISHED_AT_ANNOTATION)
        old = _load(previous)
        if p.key_problems:
            p.membership_gen = old.generation if old is not None else 0
            p.published_at = prev_at
            return
        text, gen = membership_doc.build_text(
            p.name, p.spec.quorum, p.slots, p.public_keys, previous
        )
        if text != previous and old is not None:
            ready_users = [  # departing members count too: they still vote on the old one
                n
                for n, x in p.by_name.items()
                if (_meta(x).get("labels") or {}).get(names.ROLE_LABEL) == names.ROLE_USER
                and _pod_ready(x)
            ]
            ok, why = propagation.may_publish(
                [m.name for m in old.user_nodes],
                old.quorum,
                p.user_members,
                p.spec.quorum,
                ready_users,
            )
            if not ok:
                p.publish_hold = why
                text, gen = str(previous), old.generation
        p.published_at = propagation.published_at(previous, text, prev_at, p.now)
        want_cm = membership_doc.configmap(
            p.name, p.ns, p.spec.image_tag, text, p.ca_cert.decode(), p.published_at
        )
        want_cm["metadata"]["ownerReferences"] = [p.owner]
        want_cm = diff.with_hash(want_cm)
        if diff.needs_apply(want_cm, cm):
            await self.kube.apply(want_cm)
            p.result.writes.append(f"ConfigMap/{cm_name}")
            if text != previous:
                await self.event(
                    p.body,
                    "Normal",
                    "MembershipPublished",
                    f"membership generation {gen}: {p.spec.members} user nodes, "
                    f"quorum {p.spec.quorum}",
                )
        p.membership_gen = gen
        # Has every member's pod loaded it? Only pods of an older generation can lag.
        published = _load(text)
        members = {m.name for m in published.user_nodes} if published is not None else set()
        pods = [
            x
            for n, x in p.by_name.items()
            if not _meta(x).get("deletionTimestamp")
            and (
                n in members  # a user node's pod is named as its member
                or (_meta(x).get("labels") or {}).get(names.ROLE_LABEL) in names.SINGLETON_ROLES
            )
        ]
        loaded = await self.pod_metrics.generations(pods) if old is not None else {}
        p.spread = propagation.propagation(
            gen if old is not None else 0,
            p.published_at,
            [
                propagation.PodGeneration(
                    str(_meta(x)["name"]),
                    str(_meta(x).get("creationTimestamp", "")),
                    loaded.get(str(_meta(x)["name"])),
                )
                for x in pods
            ],
            p.now,
            self.config.membership_wait,
        )

    async def _phase_children(self, p: Pass) -> None:
        """Render every workload and the rest; write only what differs from the live object."""
        singleton_hashes = {
            role: keyring.key_hash(p.key_secrets[names.key_secret(names.singleton(p.name, role))])
            for role in names.SINGLETON_ROLES
            if names.key_secret(names.singleton(p.name, role)) in p.key_secrets
        }
        live_users = await asyncio.gather(
            *(
                self.kube.get(path("StatefulSet", p.ns, names.user_sts(p.name, z)))
                for z in p.spec.zones
            )
        )
        singleton_keys = [
            (render.singleton_kind(r), names.singleton(p.name, r)) for r in names.SINGLETON_ROLES
        ]
        live_singletons = await asyncio.gather(
            *(self.kube.get(path(k, p.ns, n)) for k, n in singleton_keys)
        )
        self._plan_restarts(
            p, dict(zip(names.SINGLETON_ROLES, live_singletons, strict=True)), live_users
        )
        live_replicas = {
            z: int((sts.get("spec") or {}).get("replicas") or 0)
            for z, sts in zip(p.spec.zones, live_users, strict=True)
            if sts is not None
        }
        p.keep_departing = not p.spread.settled or bool(p.publish_hold)
        p.user_replicas = propagation.user_replicas(
            p.spec.per_zone, live_replicas, p.spec.zones, settled=not p.keep_departing
        )
        for role in p.restart_admitted:
            await self.event(
                p.body,
                "Normal",
                "RestartStarted",
                f"restarting the {role} pods (request {p.restart_tokens[role]!r})",
            )
        desired = [
            diff.with_hash(o)
            for o in render.render(
                p.name,
                p.ns,
                p.uid,
                p.spec,
                singleton_key_hashes=singleton_hashes,
                pod_monitor=p.caps.pod_monitor,
                user_replicas=p.user_replicas,
                restart_tokens=p.restart_tokens,
                hold_sst=p.restore is not None and p.restore.hold_sst,
            )
        ]
        p.want_hash = {
            m: h
            for zone, h in observe.template_hashes(desired).items()
            for m in p.user_members
            if p.user_zone[m] == zone
        }
        p.wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
        known = {
            ("StatefulSet", names.user_sts(p.name, z)): sts
            for z, sts in zip(p.spec.zones, live_users, strict=True)
        }
        known.update(zip(singleton_keys, live_singletons, strict=True))
        rest = [o for o in desired if (o["kind"], o["metadata"]["name"]) not in known]
        fetched = await asyncio.gather(
            *(self.kube.get(path(o["kind"], p.ns, o["metadata"]["name"])) for o in rest)
        )
        live = dict(known)
        live.update(
            {(o["kind"], o["metadata"]["name"]): h for o, h in zip(rest, fetched, strict=True)}
        )
        writes: list[str] = []
        for obj in desired:
            have = live[(obj["kind"], obj["metadata"]["name"])]
            if diff.must_recreate(obj, have):
                assert have is not None
                hm = _meta(have)
                await self.kube.delete(obj["kind"], p.ns, str(hm["name"]), uid=str(hm.get("uid")))
                have = None
            if diff.needs_apply(obj, have):
                await self.kube.apply(obj)
                writes.append(f"{obj['kind']}/{obj['metadata']['name']}")
        p.result.writes += writes
        if writes:
            await self.event(p.body, "Normal", "ChildrenApplied", f"applied {', '.join(writes)}")

    @staticmethod
    def _plan_restarts(
        p: Pass, singletons: Mapping[str, Obj | None], users: Sequence[Obj | None]
    ) -> None:
        """Which restart token each role's template carries (restart.py decides)."""

        def template_token(obj: Obj | None) -> str:
            tmpl = ((obj or {}).get("spec") or {}).get("template") or {}
            return observe.annotation(tmpl, names.RESTART_TOKEN_ANNOTATION)

        applied = {r: template_token(o) for r, o in singletons.items()}
        applied[names.ROLE_USER] = next((t for t in map(template_token, users) if t), "")
        asked = restart.requested(_meta(p.body).get("annotations") or {})
        roles = [
            restart.RoleRestart(r, asked[r], applied[r], *restart.pod_state(p.pods, r, applied[r]))
            for r in names.RESTART_ROLES
        ]
        p.restart_tokens = restart.plan(roles)
        p.restart_progress = restart.progress(roles, p.restart_tokens)
        p.restart_admitted = [r for r in names.RESTART_ROLES if p.restart_tokens[r] != applied[r]]

    async def _phase_prune(self, p: Pass) -> None:
        """Remove owned children the spec no longer asks for."""
        for kind in kinds.prunable(p.caps.pod_monitor):
            for obj in await self.kube.list(path(kind, p.ns), names.network_selector(p.name)):
                om = _meta(obj)
                if (kind, om.get("name")) in p.wanted:
                    continue
                role = (om.get("labels") or {}).get(names.ROLE_LABEL)
                if kind == "StatefulSet" and role == names.ROLE_USER and p.keep_departing:
                    continue  # a removed zone's members leave once the membership settled
                if not any(o.get("uid") == p.uid for o in om.get("ownerReferences") or []):
                    continue
                if await self.kube.delete(kind, p.ns, str(om["name"]), uid=str(om.get("uid"))):
                    await self.event(
                        p.body, "Normal", "ChildRemoved", f"removed {kind}/{om['name']}"
                    )

    async def _phase_rollout(self, p: Pass) -> None:
        """Quorum-safe restarts of user nodes whose template or key changed."""
        rotated = {
            m: keyring.rotated_at(p.key_secrets[names.key_secret(m)])
            for m in p.user_members
            if names.key_secret(m) in p.key_secrets
        }
        views = p.views
        p.decision = rollout.decide(
            p.user_members,
            views,
            p.want_hash,
            rotated,
            p.spec.quorum,
            p.now,
            self.config.rollout_settle,
        )
        d = p.decision
        if d.delete is not None:
            pod = p.by_name[d.delete]
            why = "key" if views[d.delete].config_hash == p.want_hash[d.delete] else "config"
            if await self.kube.delete("Pod", p.ns, d.delete, uid=str(_meta(pod).get("uid"))):
                metrics.RESTARTS.labels(why).inc()
                await self.event(p.body, "Normal", "UserNodeRestarted", d.reason)
            p.result.requeue_after = 1.0
        elif d.waiting:
            await self._note_waiting(p.body, p.prev_status, d.reason)

    async def _phase_rotation(self, p: Pass) -> None:
        """Key rotation, one member at a time, under the rollout's guard, once the
        previous rotation's membership has reached every pod."""
        if not p.token or p.decision.pending or p.key_problems:
            return
        todo = keyring.rotation_candidates(p.slots, p.key_secrets, p.token)
        if not todo:
            return
        slot = todo[0]
        p.rotating = f"rotating keys: {len(todo)} member(s) left"
        if not p.spread.settled:
            return
        ok, why = (True, "")
        if slot.role == names.ROLE_USER:
            ok, why = rollout.may_disrupt_one(
                p.user_members, p.views, p.spec.quorum, p.now, self.config.rollout_settle
            )
        if ok:
            await self._rotate(
                p.body,
                slot,
                p.key_secrets[names.key_secret(slot.name)],
                p.spec,
                p.token,
                self._tls_for(p, slot),
            )
            p.result.requeue_after = 0.5
        else:
            p.decision = rollout.Decision(
                None, True, f"key rotation of {slot.name}: {why}", len(todo)
            )
            await self._note_waiting(p.body, p.prev_status, p.decision.reason)

    async def _phase_departed_keys(self, p: Pass) -> None:
        """Keys of members that left, once their pods are gone."""
        for sname in p.key_plan.delete:
            member = sname.removesuffix("-key")
            if member in p.by_name:
                continue
            sec = p.key_secrets.get(sname)
            if sec is not None and await self.kube.delete(
                "Secret", p.ns, sname, uid=str(_meta(sec).get("uid"))
            ):
                await self.event(
                    p.body, "Normal", "KeyRemoved", f"removed the key of departed member {member}"
                )

    async def _phase_status(self, p: Pass) -> Result:
        spec, views = p.spec, p.views
        ready_by_zone: dict[str, int] = {z: 0 for z in spec.zones}
        for m, v in views.items():
            if v.ready:
                ready_by_zone[p.user_zone[m]] += 1
        singles = {role: observe.role_ready(p.pods, role) for role in names.SINGLETON_ROLES}
        db_ready, db_msg = await self._database(p.ns, p.name, spec, p.pods)
        keys_msg = "; ".join(p.key_problems) or (
            f"{len(p.slots)} peer keys published in membership generation {p.membership_gen}"
            + (f"; {p.rotating}" if p.rotating else "")
        )
        membership_problems = [m for m in (p.publish_hold, p.spread.message) if m]
        settled = p.spread.settled and not p.publish_hold
        d = p.decision
        obs = status.Observed(
            zones=spec.zones,
            per_zone=spec.per_zone,
            quorum=spec.quorum,
            members=spec.members,
            ready_by_zone=ready_by_zone,
            singletons_ready=singles,
            database_ready=db_ready,
            database_message=db_msg,
            keys_ok=not p.key_problems and not p.rotating,
            keys_message=keys_msg,
            membership_generation=p.membership_gen,
            endpoint=f"{names.client_service(p.name)}.{p.ns}.svc:{spec.service_port}",
            selector=",".join(
                f"{k}={v}" for k, v in names.selector_labels(p.name, names.ROLE_USER).items()
            ),
            zones_without_nodes=[z for z in spec.zones if z not in p.caps.zones_with_nodes],
            unschedulable=sorted(str(_meta(x)["name"]) for x in p.pods if _unschedulable(x)),
            rollout_pending=d.pending,
            rollout_waiting=d.waiting,
            rollout_reason=d.reason if d.waiting else "",
            membership_settled=settled,
            membership_message="; ".join(membership_problems) if not settled else "",
            extra_problems=(
                (f"restore: {p.restore.message}",) if p.restore and not p.restore.ok else ()
            ),
        )
        metrics.ROLLOUT_WAITING.labels(p.ns, p.name).set(1 if d.waiting else 0)
        metrics.ROLLOUT_PENDING.labels(p.ns, p.name).set(d.pending)
        new = status.compute(p.generation, obs, p.prev_status, p.now)
        if p.restart_progress:
            new["restart"] = p.restart_progress
        if p.restore is not None:
            await self._restore_condition(p, new)
        await self.write_status(p.body, new)
        p.result.status = new
        if p.result.requeue_after is None and not settled:
            p.result.requeue_after = 1.0
        if p.result.requeue_after is None and new["phase"] != "Ready":
            p.result.requeue_after = 5.0
        return p.result

    async def _restore_condition(self, p: Pass, new: Obj) -> None:
        g = p.restore
        assert g is not None
        prev_conds = p.prev_status.get("conditions") or []
        cond = status.condition(
            prev_conds, backup.RESTORED, g.ok, g.reason, g.message, p.generation, p.now
        )
        new["conditions"].append(cond)
        before: Mapping[str, Any] = next(
            (c for c in prev_conds if c.get("type") == backup.RESTORED), {}
        )
        if before.get("reason") != g.reason and g.reason != backup.REASON_RUNNING:
            etype = "Normal" if g.ok else "Warning"
            await self.event(p.body, etype, g.reason, g.message)

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
        replaced = keyring.rotated_secret(
            str(meta0["name"]),
            str(meta0["namespace"]),
            slot,
            secret,
            spec.image_tag,
            token,
            self.clock(),
            tls_pair,
        )
        await self.kube.replace(replaced)  # resourceVersion guards against a concurrent change
        metrics.KEYS_GENERATED.labels("rotation").inc()
        what = (
            "certificate (its key signs the log and stays)"
            if keyring.follows_log(slot)
            else "peer key"
        )
        await self.event(body, "Normal", "KeyRotated", f"rotated the {what} of {slot.name}")

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
                    "ownerReferences": render.log_owners(spec.database, owner),
                },
                "data": {names.CA_CERT_KEY: _b64(cert), names.TLS_KEY_KEY: _b64(key)},
            }
            created = await self.kube.create(obj)
            sec = created or await self.kube.get(path("Secret", ns, ca_name))
            if created is not None:
                await self.event(body, "Normal", "CertificateAuthority", "created the network CA")
        if sec is None:
            raise RuntimeError(f"the CA Secret {ca_name} vanished")
        # Kept with the log: the retained SST key Secret holds a certificate this CA issued.
        sec = await self._own(body, sec, render.log_owners(spec.database, owner), "the CA Secret")
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
                        names.TLS_CERT_KEY: _b64(ccert),
                        names.TLS_KEY_KEY: _b64(ckey),
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
        owners = render.log_owners(db, owner)
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
        have = await self._own(body, have, owners, "the Postgres password Secret")
        dsn = render.updated_dsn(network, ns, have.get("data") or {})
        if dsn is not None:  # written before the DSN named the cluster-IP Service
            await self.kube.replace(
                {**have, "apiVersion": "v1", "kind": "Secret", "data": {**have["data"], "dsn": dsn}}
            )
            await self.event(
                body,
                "Normal",
                "DatabaseCredentials",
                f"the DSN now names the Service {names.postgres_service(network)} (same password;"
                " the SST uses it from its next start)",
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
