"""Restarts on request (``kubectl beco restart NAME --role R``), quorum-safe. Pure.

A request is a token in the annotation ``beco.dev/restart-<role>`` of the BecoNetwork. The
operator answers it the way ``kubectl rollout restart`` does, by writing the token into the
pod template of the role's workloads (annotation ``beco.dev/restart-token``): the template's
config hash changes, so user nodes go through the rollout's own decision (one at a time, only
while the others keep the quorum) and the single rendezvous, validator and SST are replaced by
their workload. Roles are taken one at a time, in :data:`names.RESTART_ROLES` order, each back
Ready before the next one's template changes. A token stays in the template once applied (a
request removed later restarts nothing); a new token is a new restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from beco_operator import names, observe

WAITING, RESTARTING, DONE = "Waiting", "Restarting", "Done"


@dataclass(frozen=True, slots=True)
class RoleRestart:
    role: str
    requested: str  # the token on the BecoNetwork ("": never asked)
    applied: str  # the token in the live workload's pod template
    carried: bool  # every pod of the role runs that template's token
    ready: bool  # every pod of the role is ready


def requested(annotations: Mapping[str, Any]) -> dict[str, str]:
    return {r: str(annotations.get(names.restart_annotation(r)) or "") for r in names.RESTART_ROLES}


def pod_state(pods: Iterable[Mapping[str, Any]], role: str, token: str) -> tuple[bool, bool]:
    """(carried, ready) of ``role``'s pods: every one carries ``token``; every one is ready.
    No pod at all is neither."""
    mine = [
        p
        for p in pods
        if (observe.meta(p).get("labels") or {}).get(names.ROLE_LABEL) == role
        and not observe.meta(p).get("deletionTimestamp")
    ]
    if not mine:
        return False, False
    carried = all(observe.annotation(p, names.RESTART_TOKEN_ANNOTATION) == token for p in mine)
    return carried, all(observe.pod_ready(p) for p in mine)


def _busy(r: RoleRestart) -> bool:
    """A role whose requested restart has been applied and is not finished."""
    return bool(r.applied) and not (r.carried and r.ready)


def plan(roles: Sequence[RoleRestart]) -> dict[str, str]:
    """The token each role's template carries now: the applied one, except that the first
    role with a new request gets it when no role is still restarting."""
    out = {r.role: r.applied for r in roles}
    if any(_busy(r) for r in roles):
        return out
    for r in roles:
        if r.requested and r.requested != r.applied:
            out[r.role] = r.requested
            break
    return out


def progress(roles: Sequence[RoleRestart], rendered: Mapping[str, str]) -> list[dict[str, str]]:
    """The status of every requested restart, for ``status.restart``."""
    out: list[dict[str, str]] = []
    for r in roles:
        if not r.requested:
            continue
        if rendered.get(r.role) != r.requested:
            state, msg = WAITING, "waits for the restart of another role to finish"
        elif r.applied == r.requested and r.carried and r.ready:
            state, msg = DONE, f"every {r.role} pod restarted and ready"
        else:
            state, msg = (
                RESTARTING,
                (
                    "restarting one pod at a time while the quorum holds"
                    if r.role == names.ROLE_USER
                    else f"replacing the {r.role} pod"
                ),
            )
        out.append({"role": r.role, "token": r.requested, "state": state, "message": msg})
    return out
