"""kubectl beco status: the summary, the advice and the output, from API objects (no cluster)."""

from __future__ import annotations

from typing import Any

from beco_kubectl import summary
from beco_kubectl.summary import Head

NS, NAME = "beco-demo", "demo"


def _net(per_zone: int = 1, phase: str = "Ready", **extra: Any) -> dict[str, Any]:
    members = 3 * per_zone
    ready_cond = {
        "type": "Ready",
        "status": "True" if phase == "Ready" else "False",
        "reason": "NetworkReady" if phase == "Ready" else "PodsNotReady",
        "message": "every member is ready" if phase == "Ready" else "user nodes down",
    }
    net: dict[str, Any] = {
        "metadata": {"name": NAME, "namespace": NS, "annotations": {}},
        "spec": {"zones": ["a", "b", "c"], "userNodes": {"perZone": per_zone}},
        "status": {
            "phase": phase,
            "members": members,
            "quorum": members // 2 + 1,
            "membershipGeneration": 4,
            "rollout": {"waiting": False, "reason": "", "pending": 0},
            "conditions": [
                ready_cond,
                {
                    "type": "DatabaseReady",
                    "status": "True",
                    "reason": "DatabaseReady",
                    "message": "postgres ready",
                },
            ],
        },
    }
    net["status"].update(extra)
    return net


def _pod(name: str, role: str, ready: bool = True, zone: str = "", **status: Any) -> dict[str, Any]:
    labels = {"beco.dev/role": role, "beco.dev/network": NAME}
    if zone:
        labels["beco.dev/zone"] = zone
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            **status,
        },
    }


def _pods(down: tuple[str, ...] = (), per_zone: int = 1) -> list[dict[str, Any]]:
    users = [
        _pod(f"{NAME}-user-{z}-{i}", "user", f"{NAME}-user-{z}-{i}" not in down, z)
        for z in "abc"
        for i in range(per_zone)
    ]
    return users + [_pod(f"{NAME}-{r}-0", r) for r in ("rendezvous", "validator", "sst")]


def test_healthy_network_has_margin_and_no_advice() -> None:
    s = summary.summarize(_net(), _pods(), [])
    assert (s.members, s.quorum, s.ready_user_nodes, s.margin) == (3, 2, 3, 1)
    assert [m.name for m in s.user_nodes["b"]] == ["demo-user-b-0"]
    assert all(m.ready for m in s.singletons) and s.advice == []
    assert s.rotation is None and s.tls


def test_readiness_comes_from_the_pods_not_the_status() -> None:
    # the operator's status still says Ready; one pod is not: margin 0, advice says so
    s = summary.summarize(_net(), _pods(down=("demo-user-c-0",)), [])
    assert (s.ready_user_nodes, s.margin) == (2, 0)
    assert any(a.startswith("no margin") for a in s.advice)
    assert any("kubectl -n beco-demo describe pod demo-user-c-0" in a for a in s.advice)


def test_quorum_lost_and_missing_pods() -> None:
    pods = [p for p in _pods(down=("demo-user-a-0",)) if p["metadata"]["name"] != "demo-user-b-0"]
    s = summary.summarize(_net(phase="Degraded"), pods, [])
    assert s.margin == -1
    assert s.advice[0].startswith("QUORUM LOST: 1 of 3 user nodes ready, quorum 2")
    (b,) = s.user_nodes["b"]
    assert (b.ready, b.state) == (False, "missing")
    assert "QUORUM LOST" in summary.render_text(s, None, 0)


def test_waiting_container_reason_restarts_and_singletons() -> None:
    pods = _pods()
    pods[-1] = _pod(
        "demo-sst-0",
        "sst",
        False,
        containerStatuses=[
            {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ],
    )
    s = summary.summarize(_net(phase="Degraded"), pods, [])
    (sst,) = [m for m in s.singletons if m.role == "sst"]
    assert (sst.ready, sst.state, sst.restarts) == (False, "Running (CrashLoopBackOff)", 3)
    assert any(a.startswith("the sst is not ready (Running (CrashLoopBackOff))") for a in s.advice)


def test_rotation_progress_from_the_key_secrets() -> None:
    net = _net()
    net["metadata"]["annotations"]["beco.dev/rotate-keys"] = "t1"

    def sec(token: str) -> dict[str, Any]:
        return {"metadata": {"annotations": {"beco.dev/rotation-token": token}}}

    s = summary.summarize(net, _pods(), [sec("t1"), sec("t0"), sec("t1")])
    assert s.rotation is not None and (s.rotation.done, s.rotation.total) == (2, 3)
    assert s.rotation.in_progress
    assert "key rotation 't1': in progress, 2/3 keys" in summary.render_text(s, None, 0)
    done = summary.summarize(net, _pods(), [sec("t1")] * 3)
    assert done.rotation is not None and not done.rotation.in_progress


def test_failed_spec_advice_names_the_reason() -> None:
    net = _net(phase="Failed")
    net["status"]["conditions"][0].update(reason="InvalidSpec", message="zones must be unique")
    s = summary.summarize(net, [], [])
    assert s.advice == [
        "the operator refused the spec (zones must be unique); fix it: "
        "kubectl -n beco-demo edit beconetwork demo"
    ]


def test_rollout_waiting_is_shown_and_explained() -> None:
    net = _net(phase="Progressing", rollout={"waiting": True, "pending": 2, "reason": "1 ready"})
    s = summary.summarize(net, _pods(), [])
    assert "rollout: 2 user node(s) to restart, waiting: 1 ready" in summary.render_text(s, None, 0)
    assert any(a.startswith("rollout held back by the quorum guard") for a in s.advice)


def test_head_reachable_and_not() -> None:
    s = summary.summarize(_net(), _pods(), [])
    head = Head(tree_size=12, root_hash="ab" * 32, timestamp_ms=1_000_000)
    d = summary.to_dict(s, head, now_ms=1_090_000)
    assert d["treeHead"] == {
        "reachable": True,
        "tree_size": 12,
        "root_hash": "ab" * 32,
        "timestamp_ms": 1_000_000,
        "ageSeconds": 90.0,
    }
    assert "tree head: size 12, root abababababababab..., signed 90s ago" in summary.render_text(
        s, head, 1_090_000
    )
    gone = Head(error="kubectl port-forward to service/demo failed: no endpoints")
    assert summary.to_dict(s, gone, 0)["treeHead"] == {"reachable": False, "error": gone.error}
    assert "tree head: not reachable (kubectl port-forward" in summary.render_text(s, gone, 0)
    assert "treeHead" not in summary.to_dict(s, None, 0)
    assert d["user_nodes"]["a"][0]["name"] == "demo-user-a-0" and d["margin"] == 1


def test_restart_progress_is_shown_and_read_per_token() -> None:
    restart = [
        {"role": "sst", "token": "t1", "state": "Done", "message": "every sst pod restarted"},
        {"role": "user", "token": "t1", "state": "Restarting", "message": "one at a time"},
    ]
    net = _net(restart=restart)
    s = summary.summarize(net, _pods(), [])
    assert s.restarts[1] == restart[1]
    assert "restart of user 't1': Restarting (one at a time)" in summary.render_text(s, None, 0)
    assert summary.restart_states(net, "t1", ["sst", "user", "validator"]) == {
        "sst": "Done",
        "user": "Restarting",
        "validator": "Requested",
    }
    # an older request's Done does not answer a new one
    assert summary.restart_states(net, "t2", ["sst"]) == {"sst": "Requested"}
