"""The operator with in-cluster credentials, as it runs in its pod: the ServiceAccount's token
and CA from the mounted directory, the API server from KUBERNETES_SERVICE_HOST/PORT (no
kubeconfig, no cluster DNS). The ServiceAccount is bound to deploy/rbac/operator-rbac.yaml
(the chart's rules: tests/ship checks they are identical)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.plane import ControlPlane

from .harness import OPERATOR_NS, OperatorProcess, net_path, network, wait_ready

pytestmark = pytest.mark.controlplane


def test_operator_reconciles_with_in_cluster_credentials(
    control_plane: ControlPlane,
    k8s_namespace: str,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, k8s_namespace
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(cp.service_account_token(OPERATOR_NS, "beco-operator"))
    (sa / "ca.crt").write_bytes(cp.ca_file.read_bytes())
    (sa / "namespace").write_text(OPERATOR_NS)
    op = OperatorProcess(
        None,
        tmp_path / "operator.log",
        "--no-pod-metrics",  # kwok's pod addresses lead nowhere
        env={
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(cp.ports["apiserver"]),
            "BECO_OPERATOR_SERVICEACCOUNT_DIR": str(sa),
        },
    )
    op.start()
    try:
        cp.api("POST", net_path(ns), network("demo", ns))
        obj = wait_ready(cp, ns, "demo")
        assert obj["status"]["members"] == 3
        for code in ("401", "403"):  # (404s are normal: children read before they exist)
            assert op.metric("beco_operator_api_errors_total", {"code": code}) == 0, code
    finally:
        op.stop()
        print(f"--- operator log tail ---\n{op.log_tail(40)}")
