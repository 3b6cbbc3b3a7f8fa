"""Two operator replicas with --leader-elect: one reconciles, the other takes over when it dies."""

from __future__ import annotations

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
