"""kubectl beco restart: which role's template gets the request, and what status says."""

from __future__ import annotations

from typing import Any

from beco_operator import names, render, restart

from .conftest import make_spec

R = restart.RoleRestart


def roles(**over: R) -> list[R]:
    """Every role at rest (no request, nothing applied, every pod ready), with ``over``."""
    base = {r: R(r, "", "", True, True) for r in names.RESTART_ROLES}
    base.update(over)
    return [base[r] for r in names.RESTART_ROLES]


def test_nothing_requested_changes_nothing() -> None:
    assert restart.plan(roles()) == {r: "" for r in names.RESTART_ROLES}
    assert restart.progress(roles(), restart.plan(roles())) == []


def test_a_request_for_one_role_goes_to_that_role_only() -> None:
    rs = roles(user=R("user", "t1", "", True, True))
    plan = restart.plan(rs)
    assert plan == {"rendezvous": "", "validator": "", "sst": "", "user": "t1"}
    (st,) = restart.progress(rs, plan)
    assert (st["role"], st["token"], st["state"]) == ("user", "t1", restart.RESTARTING)


def test_all_roles_go_one_at_a_time_in_order() -> None:
    asked = {r: R(r, "t", "", True, True) for r in names.RESTART_ROLES}
    plan = restart.plan(roles(**asked))
    assert [r for r, t in plan.items() if t] == [names.RESTART_ROLES[0]]
    states = {s["role"]: s["state"] for s in restart.progress(roles(**asked), plan)}
    assert states == {
        "rendezvous": restart.RESTARTING,
        "validator": restart.WAITING,
        "sst": restart.WAITING,
        "user": restart.WAITING,
    }
    # the rendezvous applied but its pod not yet replaced: the next role waits
    asked["rendezvous"] = R("rendezvous", "t", "t", False, False)
    assert restart.plan(roles(**asked))["validator"] == ""
    # replaced but not ready yet: still waits
    asked["rendezvous"] = R("rendezvous", "t", "t", True, False)
    assert restart.plan(roles(**asked))["validator"] == ""
    # back and ready: the validator's turn
    asked["rendezvous"] = R("rendezvous", "t", "t", True, True)
    plan = restart.plan(roles(**asked))
    assert plan["rendezvous"] == "t" and plan["validator"] == "t" and plan["sst"] == ""
    states = {s["role"]: s["state"] for s in restart.progress(roles(**asked), plan)}
    assert states["rendezvous"] == restart.DONE and states["validator"] == restart.RESTARTING


def test_an_applied_token_stays_when_the_request_goes() -> None:
    """Removing the annotation must not restart anything again (the template keeps it)."""
    rs = roles(sst=R("sst", "", "old", True, True))
    assert restart.plan(rs)["sst"] == "old"
    assert restart.progress(rs, restart.plan(rs)) == []


def test_a_new_token_is_a_new_restart_and_done_needs_every_pod() -> None:
    rs = roles(user=R("user", "t2", "t1", True, True))
    assert restart.plan(rs)["user"] == "t2"
    rs = roles(user=R("user", "t2", "t2", False, True))  # some pod still runs t1
    (st,) = restart.progress(rs, restart.plan(rs))
    assert st["state"] == restart.RESTARTING
    rs = roles(user=R("user", "t2", "t2", True, True))
    (st,) = restart.progress(rs, restart.plan(rs))
    assert st["state"] == restart.DONE


def pod(role: str, token: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"p-{role}-{token}",
        "labels": {names.ROLE_LABEL: role},
        "annotations": {names.RESTART_TOKEN_ANNOTATION: token} if token else {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_pod_state() -> None:
    pods = [pod("user", "t"), pod("user", "t", ready=False), pod("sst", "")]
    assert restart.pod_state(pods, "user", "t") == (True, False)
    assert restart.pod_state(pods, "sst", "t") == (False, True)
    assert restart.pod_state(pods, "sst", "") == (True, True)
    assert restart.pod_state(pods, "validator", "") == (False, False)  # no pod yet
    # a terminating pod does not count: its successor will
    assert restart.pod_state([pod("sst", "old", deleting=True), pod("sst", "t")], "sst", "t") == (
        True,
        True,
    )


def test_requests_are_read_per_role() -> None:
    ann = {names.restart_annotation("sst"): "x", "other": "y"}
    assert restart.requested(ann) == {"rendezvous": "", "validator": "", "sst": "x", "user": ""}


def _template_hash(tokens: dict[str, str], kind: str, name: str) -> str:
    objs = render.render(
        "demo",
        "ns",
        "uid",
        make_spec(),
        singleton_key_hashes={},
        pod_monitor=False,
        restart_tokens=tokens,
    )
    obj = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
    return str(obj["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION])


def test_a_token_changes_the_config_hash_of_its_role_only() -> None:
    user, sst = ("StatefulSet", "demo-user-a"), ("StatefulSet", "demo-sst")
    assert _template_hash({"user": "t"}, *user) != _template_hash({}, *user)
    assert _template_hash({"user": "t"}, *sst) == _template_hash({}, *sst)
    assert _template_hash({"sst": "t"}, *sst) != _template_hash({}, *sst)
    rdv = (render.singleton_kind("rendezvous"), "demo-rendezvous")
    assert _template_hash({"rendezvous": "t"}, *rdv) != _template_hash({}, *rdv)
