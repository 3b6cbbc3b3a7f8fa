"""Two operator replicas with --leader-elect: one reconciles, the other takes over when it dies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cluster.plane import ControlPlane

from .harness import OPERATOR_NS, OperatorProcess, net_path, network, wait, wait_ready

pytestmark = pytest.mark.controlplane


def test_standby_takes_over_when_the_leader_dies(
    control_plane: ControlPlane, k8s_namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    cp, ns = control_plane, k8s_namespace
    lease = f"beco-operator-test-{ns}"
    args = (
        "--leader-elect",
        f"--lease-namespace={OPERATOR_NS}",
        f"--lease-name={lease}",
        "--lease-duration=6",
        "--lease-renew=2",
    )
    first = OperatorProcess(operator_kubeconfig, tmp_path / "first.log", *args, "--identity=first")
    second = OperatorProcess(
        operator_kubeconfig, tmp_path / "second.log", *args, "--identity=second"
    )
    first.start()
    try:
        wait(lambda: first.metric("beco_operator_leader") == 1, 30, "the first replica to lead")
        second.start()
        cp.api("POST", net_path(ns), network("demo", ns))
        wait_ready(cp, ns, "demo")
        assert second.metric("beco_operator_leader") == 0
        assert second.metric("beco_operator_reconciles_total") == 0
        holder = cp.api(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/{lease}"
        )
        assert holder["spec"]["holderIdentity"] == "first"

        first.kill()
        wait(
            lambda: second.metric("beco_operator_leader") == 1, 60, "the standby to take the lease"
        )
        # The new leader reconciles: a deleted child comes back.
        cp.api("DELETE", f"/api/v1/namespaces/{ns}/services/demo")
        wait(lambda: cp.exists(f"/api/v1/namespaces/{ns}/services/demo"), 60, "the client Service")
        wait(
            lambda: second.metric("beco_operator_reconciles_total") >= 1,
            30,
            "the new leader to finish a reconcile",
        )
    finally:
        first.stop()
        second.stop()
        print(first.log_tail(20), second.log_tail(20), sep="\n---\n")


def test_a_leader_stopped_on_purpose_hands_over_at_once(
    control_plane: ControlPlane, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    """SIGTERM (a rolling update of the chart's Deployment): the leader stops reconciling,
    then releases the Lease, so the standby leads within one retry instead of waiting out a
    lease that nobody renews any more (60 s here: longer than the whole wait)."""
    cp = control_plane
    lease = "beco-operator-test-handover"
    args = (
        "--leader-elect",
        f"--lease-namespace={OPERATOR_NS}",
        f"--lease-name={lease}",
        "--lease-duration=60",
        "--lease-renew=1",
    )
    first = OperatorProcess(operator_kubeconfig, tmp_path / "first.log", *args, "--identity=first")
    second = OperatorProcess(
        operator_kubeconfig, tmp_path / "second.log", *args, "--identity=second"
    )
    url = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/{lease}"
    first.start()
    try:
        wait(lambda: first.metric("beco_operator_leader") == 1, 30, "the first replica to lead")
        second.start()
        time.sleep(2)
        assert second.metric("beco_operator_leader") == 0
        before = cp.api("GET", url)["spec"]
        assert before["holderIdentity"] == "first"
        stopped = time.monotonic()
        first.stop()  # SIGTERM, and wait for the process to exit
        assert "released the leader lease" in first.log_tail(40)
        wait(
            lambda: second.metric("beco_operator_leader") == 1, 30, "the standby to take the lease"
        )
        assert time.monotonic() - stopped < 30
        after = cp.api("GET", url)["spec"]
        assert after["holderIdentity"] == "second"
        assert after["leaseTransitions"] == int(before.get("leaseTransitions") or 0) + 1
    finally:
        first.stop()
        second.stop()
        print(first.log_tail(20), second.log_tail(20), sep="\n---\n")
