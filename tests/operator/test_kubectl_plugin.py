"""`kubectl beco status`, `rotate-keys` and `restart` on the kwok control plane, run as kubectl runs plugins.

kubectl finds ``kubectl-beco`` on PATH (the package's console script), so these tests call
``kubectl beco ...`` exactly as a user does, against a BecoNetwork the operator reconciled.
kwok runs no containers: the tree head is "not reachable" here, which status must say
plainly (the reachable case runs on the real cluster: e2e/kubernetes/test_kubectl_beco.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.plane import ControlPlane

from .harness import OperatorProcess, PodWatch, items, net_path, network, wait_ready

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(420)]
SEL = "app.kubernetes.io/managed-by=beco-operator,beco.dev/network={}"


def kubectl_beco(
    cp: ControlPlane, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # HOME: kubectl keeps its discovery cache there (the plane's own dir, not the repo or ~)
    env = {**os.environ, **cp.env(), "HOME": str(cp.workdir)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["kubectl", "beco", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_status_of_a_reconciled_network(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    cp.api("POST", net_path(ns), network("demo", ns))
    wait_ready(cp, ns, "demo")

    data: dict[str, Any] = json.loads(
        _ok(kubectl_beco(cp, "status", "demo", "-n", ns, "-o", "json"))
    )
    assert (data["phase"], data["members"], data["quorum"]) == ("Ready", 3, 2)
    assert (data["ready_user_nodes"], data["margin"]) == (3, 1)
    assert {z: [m["ready"] for m in row] for z, row in data["user_nodes"].items()} == {
        "a": [True],
        "b": [True],
        "c": [True],
    }
    assert {m["role"] for m in data["singletons"] if m["ready"]} == {
        "rendezvous",
        "validator",
        "sst",
    }
    conds = {c["type"]: c["status"] for c in data["conditions"]}
    assert conds["Ready"] == conds["QuorumAvailable"] == "True"
    assert data["advice"] == [] and data["rotation"] is None
    # no container runs on kwok: the head cannot be read, and status says so instead of failing
    assert data["treeHead"]["reachable"] is False and data["treeHead"]["error"]

    text = _ok(kubectl_beco(cp, "--kubeconfig", str(cp.kubeconfig), "-n", ns, "status", "demo"))
    assert f"BecoNetwork {ns}/demo: Ready" in text
    assert "quorum 2 of 3 user nodes; ready 3; margin +1" in text
    assert "tree head: not reachable (" in text

    as_yaml = yaml.safe_load(
        _ok(kubectl_beco(cp, "status", "demo", "-n", ns, "-o", "yaml", "--no-head"))
    )
    assert as_yaml["phase"] == "Ready" and "treeHead" not in as_yaml

    missing = kubectl_beco(cp, "status", "nope", "-n", ns, "--no-head")
    assert missing.returncode == 3, missing.stderr
    assert f"BecoNetwork {ns}/nope not found" in missing.stderr


def test_rotate_keys_waits_for_the_operator(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    cp.api("POST", net_path(ns), network("demo", ns))
    wait_ready(cp, ns, "demo")
    out = kubectl_beco(
        cp,
        "rotate-keys",
        "demo",
        "-n",
        ns,
        "--token",
        "k1",
        "--wait",
        "--timeout",
        "240",
        "-o",
        "json",
        timeout=300,
    )
    result = json.loads(_ok(out))
    obj = cp.api("GET", net_path(ns, "demo"))
    assert obj["metadata"]["annotations"]["beco.dev/rotate-keys"] == "k1"
    secrets = items(
        cp, f"/api/v1/namespaces/{ns}/secrets", SEL.format("demo") + ",beco.dev/key=node"
    )
    assert {s["metadata"]["annotations"]["beco.dev/rotation-token"] for s in secrets} == {"k1"}
    n = len(secrets)
    assert n == 6  # 3 user nodes, rendezvous, validator, SST
    assert result == {"token": "k1", "waited": True, "done": n, "total": n, "phase": "Ready"}

    data = json.loads(_ok(kubectl_beco(cp, "status", "demo", "-n", ns, "-o", "json", "--no-head")))
    assert data["rotation"] == {"token": "k1", "done": n, "total": n, "inProgress": False}

    # a network that does not exist: exit 3, nothing annotated
    assert kubectl_beco(cp, "rotate-keys", "nope", "-n", ns).returncode == 3


def _uids(cp: ControlPlane, ns: str, role: str) -> dict[str, str]:
    pods = items(cp, f"/api/v1/namespaces/{ns}/pods", SEL.format("demo") + f",beco.dev/role={role}")
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


def test_restart_goes_through_the_operator_one_pod_at_a_time(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    cp.api("POST", net_path(ns), network("demo", ns))
    wait_ready(cp, ns, "demo")
    users, sst = _uids(cp, ns, "user"), _uids(cp, ns, "sst")
    watch = PodWatch(cp, ns, SEL.format("demo") + ",beco.dev/role=user")
    watch.start()
    out = kubectl_beco(
        cp, "restart", "demo", "-n", ns, "--role", "user", "--token", "r1", "--wait",
        "--timeout", "240", "-o", "json", timeout=300,
    )  # fmt: skip
    result = json.loads(_ok(out))
    watch.stop()
    assert result == {
        "token": "r1",
        "roles": ["user"],
        "waited": True,
        "states": {"user": "Done"},
        "phase": "Ready",
    }
    after = _uids(cp, ns, "user")
    assert set(after) == set(users) and all(after[n] != users[n] for n in users)
    assert min(watch.ready_counts) >= 2, "the restart dropped below the quorum"
    assert max(watch.unready_counts) <= 1, "more than one user node down at once"
    assert _uids(cp, ns, "sst") == sst, "a user-node restart replaced the SST"
    obj = cp.api("GET", net_path(ns, "demo"))
    assert obj["status"]["restart"] == [
        {
            "role": "user",
            "token": "r1",
            "state": "Done",
            "message": "every user pod restarted and ready",
        }
    ]
    data = json.loads(_ok(kubectl_beco(cp, "status", "demo", "-n", ns, "-o", "json", "--no-head")))
    assert data["restarts"][0]["state"] == "Done"

    # the whole network: every role, one after the other; the user nodes again (new token)
    result = json.loads(
        _ok(
            kubectl_beco(
                cp,
                "restart",
                "demo",
                "-n",
                ns,
                "--wait",
                "--timeout",
                "300",
                "-o",
                "json",
                timeout=360,
            )
        )
    )
    assert set(result["states"].values()) == {"Done"} and len(result["states"]) == 4
    assert _uids(cp, ns, "sst").keys() == sst.keys() and _uids(cp, ns, "sst") != sst
    again = _uids(cp, ns, "user")
    assert all(again[n] != after[n] for n in after)

    # not found: exit 3; a role that does not exist: usage, exit 2
    assert kubectl_beco(cp, "restart", "nope", "-n", ns).returncode == 3
    assert kubectl_beco(cp, "restart", "demo", "-n", ns, "--role", "postgres").returncode == 2
