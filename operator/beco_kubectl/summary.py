"""What ``kubectl beco status`` shows, computed from the objects the API returned. Pure.

Readiness comes from the pods themselves (their Ready condition), not only from the
operator's status, so the summary also tells when the status lags behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from beco_operator import names

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    role: str
    zone: str
    ready: bool
    state: str  # Running, Pending, missing, ... with the waiting reason when there is one
    restarts: int


@dataclass(frozen=True, slots=True)
class Rotation:
    token: str
    done: int
    total: int

    @property
    def in_progress(self) -> bool:
        return self.done < self.total


@dataclass(frozen=True, slots=True)
class Head:
    """The latest signed tree head, or why it could not be read."""

    tree_size: int = 0
    root_hash: str = ""
    timestamp_ms: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    namespace: str
    phase: str
    tls: bool
    conditions: list[dict[str, str]]
    zones: list[str]
    per_zone: int
    members: int
    quorum: int
    ready_user_nodes: int
    margin: int
    user_nodes: dict[str, list[Member]]
    singletons: list[Member]
    rollout: dict[str, Any]
    rotation: Rotation | None
    membership_generation: int
    restarts: list[dict[str, str]] = field(default_factory=list)  # status.restart
    advice: list[str] = field(default_factory=list)


def pod_ready(pod: Obj) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _state(pod: Obj) -> tuple[str, int]:
    st = pod.get("status") or {}
    state = str(st.get("phase") or "Unknown")
    restarts = 0
    for cs in st.get("containerStatuses") or []:
        restarts += int(cs.get("restartCount") or 0)
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            state = f"{state} ({waiting['reason']})"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        state = f"{state}, terminating"
    return state, restarts


def _member(pod: Obj, role: str, zone: str) -> Member:
    state, restarts = _state(pod)
    return Member(str(pod["metadata"]["name"]), role, zone, pod_ready(pod), state, restarts)


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def summarize(net: Obj, pods: Sequence[Obj], key_secrets: Sequence[Obj]) -> Summary:
    meta = net.get("metadata") or {}
    name, ns = str(meta.get("name", "")), str(meta.get("namespace", ""))
    spec = net.get("spec") or {}
    st = net.get("status") or {}
    zones = [str(z) for z in spec.get("zones") or []]
    per_zone = _int((spec.get("userNodes") or {}).get("perZone"), 1)
    members = _int(st.get("members"), len(zones) * per_zone)
    quorum = _int(st.get("quorum"), members // 2 + 1)

    by_name = {str(p["metadata"]["name"]): p for p in pods}
    user_nodes: dict[str, list[Member]] = {}
    for z in zones:
        row = []
        for i in range(per_zone):
            pod_name = names.user_member(name, z, i)
            pod = by_name.get(pod_name)
            row.append(
                _member(pod, names.ROLE_USER, z)
                if pod is not None
                else Member(pod_name, names.ROLE_USER, z, False, "missing", 0)
            )
        user_nodes[z] = row
    singletons = []
    for role in names.SINGLETON_ROLES:
        found = [
            p
            for p in pods
            if ((p.get("metadata") or {}).get("labels") or {}).get(names.ROLE_LABEL) == role
        ]
        if found:
            singletons += [_member(p, role, "") for p in found]
        else:
            singletons.append(Member(names.singleton(name, role), role, "", False, "missing", 0))
    ready = sum(m.ready for row in user_nodes.values() for m in row)

    token = str((meta.get("annotations") or {}).get(names.ROTATE_KEYS_ANNOTATION, ""))
    rotation = None
    if token:
        done = sum(
            1
            for s in key_secrets
            if ((s.get("metadata") or {}).get("annotations") or {}).get(
                names.ROTATION_TOKEN_ANNOTATION
            )
            == token
        )
        rotation = Rotation(token, done, len(key_secrets))

    s = Summary(
        name=name,
        namespace=ns,
        phase=str(st.get("phase") or "Pending"),
        tls=not bool((spec.get("transport") or {}).get("insecure", False)),
        conditions=[
            {k: str(c.get(k, "")) for k in ("type", "status", "reason", "message")}
            for c in st.get("conditions") or []
        ],
        zones=zones,
        per_zone=per_zone,
        members=members,
        quorum=quorum,
        ready_user_nodes=ready,
        margin=ready - quorum,
        user_nodes=user_nodes,
        singletons=singletons,
        rollout=dict(st.get("rollout") or {}),
        rotation=rotation,
        membership_generation=_int(st.get("membershipGeneration"), 0),
        restarts=[
            {k: str(r.get(k, "")) for k in ("role", "token", "state", "message")}
            for r in st.get("restart") or []
        ],
    )
    return replace(s, advice=advice(s))


def restart_states(net: Obj, token: str, roles: Sequence[str]) -> dict[str, str]:
    """Each role's state of the restart ``token`` as the operator reports it in
    ``status.restart``; ``Requested`` until the operator has seen the request."""
    seen = {
        str(r.get("role")): str(r.get("state"))
        for r in (net.get("status") or {}).get("restart") or []
        if r.get("token") == token
    }
    return {r: seen.get(r, "Requested") for r in roles}


def advice(s: Summary) -> list[str]:
    """What to do, in order of urgency; empty when the network is healthy."""
    kc = f"kubectl -n {s.namespace}"
    out: list[str] = []
    conds = {c["type"]: c for c in s.conditions}
    if s.phase == "Failed":
        msg = conds.get("Ready", {}).get("message", "")
        out.append(f"the operator refused the spec ({msg}); fix it: {kc} edit beconetwork {s.name}")
        return out
    down = [m for row in s.user_nodes.values() for m in row if not m.ready]
    if s.margin < 0:
        out.append(
            f"QUORUM LOST: {s.ready_user_nodes} of {s.members} user nodes ready, quorum "
            f"{s.quorum}: commits are impossible until {-s.margin} more are ready"
        )
    elif s.margin == 0 and s.members:
        out.append(
            "no margin: one more user-node failure stops commits; do not drain, restart or "
            "delete user-node pods now"
        )
    for m in down:
        out.append(f"user node {m.name} (zone {m.zone}) is {m.state}: {kc} describe pod {m.name}")
    for m in s.singletons:
        if not m.ready:
            out.append(f"the {m.role} is not ready ({m.state}): {kc} describe pod {m.name}")
    db = conds.get("DatabaseReady")
    if db and db["status"] != "True":
        out.append(f"database: {db['message']}; {kc} get pods -l {names.NETWORK_LABEL}={s.name}")
    if s.rollout.get("waiting"):
        out.append(
            f"rollout held back by the quorum guard: {s.rollout.get('reason', '')}; it resumes "
            "by itself once enough user nodes are ready"
        )
    ready = conds.get("Ready")
    if ready and ready["status"] != "True" and not out:
        out.append(f"{ready['reason']}: {ready['message']}")
    if out:
        out.append(f"events and conditions: {kc} describe beconetwork {s.name}")
    return out


def head_age_seconds(head: Head, now_ms: int) -> float | None:
    if head.error or not head.timestamp_ms:
        return None
    return max(0.0, (now_ms - head.timestamp_ms) / 1000)


def to_dict(s: Summary, head: Head | None, now_ms: int) -> dict[str, Any]:
    """The machine-readable status (``-o json|yaml``)."""
    d = asdict(s)
    d["rotation"] = (
        None if s.rotation is None else {**asdict(s.rotation), "inProgress": s.rotation.in_progress}
    )
    if head is not None:
        hd: dict[str, Any] = asdict(head)
        if head.error:
            hd = {"reachable": False, "error": head.error}
        else:
            hd = {"reachable": True, **hd, "ageSeconds": head_age_seconds(head, now_ms)}
            hd.pop("error")
        d["treeHead"] = hd
    return d


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_text(s: Summary, head: Head | None, now_ms: int) -> str:
    lines = [
        f"BecoNetwork {s.namespace}/{s.name}: {s.phase}"
        + ("" if s.tls else " (transport: plaintext)"),
        f"quorum {s.quorum} of {s.members} user nodes; ready {s.ready_user_nodes}; "
        f"margin {s.margin:+d}" + (" (QUORUM LOST)" if s.margin < 0 else ""),
        f"membership generation {s.membership_generation}",
        "",
        "user nodes:",
    ]
    for z in s.zones:
        row = s.user_nodes.get(z, [])
        n_ready = sum(m.ready for m in row)
        lines.append(f"  zone {z}: {n_ready}/{len(row)} ready")
        for m in row:
            mark = "ready" if m.ready else "NOT READY"
            extra = f", {m.restarts} restarts" if m.restarts else ""
            lines.append(f"    {m.name:<40} {mark:<10} {m.state}{extra}")
    lines.append("services:")
    for m in s.singletons:
        mark = "ready" if m.ready else "NOT READY"
        lines.append(f"  {m.role:<11}{m.name:<38} {mark:<10} {m.state}")
    lines.append("conditions:")
    for c in s.conditions:
        lines.append(f"  {c['type']:<17}{c['status']:<6}{c['reason']}: {c['message']}")
    pending = _int(s.rollout.get("pending"), 0)
    if pending or s.rollout.get("waiting"):
        lines.append(
            f"rollout: {pending} user node(s) to restart"
            + (f", waiting: {s.rollout.get('reason', '')}" if s.rollout.get("waiting") else "")
        )
    else:
        lines.append("rollout: none in progress")
    if s.rotation is None:
        lines.append("key rotation: none requested")
    else:
        state = "in progress" if s.rotation.in_progress else "done"
        lines.append(
            f"key rotation {s.rotation.token!r}: {state}, {s.rotation.done}/{s.rotation.total} keys"
        )
    for r in s.restarts:
        lines.append(f"restart of {r['role']} {r['token']!r}: {r['state']} ({r['message']})")
    if head is not None:
        if head.error:
            lines.append(f"tree head: not reachable ({head.error})")
        else:
            age = head_age_seconds(head, now_ms)
            lines.append(
                f"tree head: size {head.tree_size}, root {head.root_hash[:16]}..., "
                f"signed {_age(age or 0.0)} ago (verified against the membership's SST key)"
            )
    if s.advice:
        lines += ["", "what to do:"] + [f"  - {a}" for a in s.advice]
    return "\n".join(lines)
