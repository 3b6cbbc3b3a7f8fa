"""`helm install` into the real control plane, then the operator under the chart's ServiceAccount.

kwok pods run no containers, so the chart's operator pod becomes Ready without running; the
operator runs here as a local process whose only credential is a TokenRequest token of the
chart's ServiceAccount. It must reconcile examples/network.yaml to Ready with no API request
refused (the chart's RBAC is enough), while the same token is denied what the operator never
needs (no more than needed). A real Prometheus scrapes the operator meanwhile, and every
operator panel and alert query must return data; promtool lints its /metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, ROOT
from .prom import (
    Prometheus,
    Target,
    check_metrics,
    free_port,
    metrics_text,
    substitute,
    variable_queries,
)
from .test_monitoring import OPERATOR_ALERTS, gen

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(420)]


def _ssar(cp: Any, token: str, attrs: dict[str, str]) -> bool:
    """Whether the token's identity may do `attrs` (SelfSubjectAccessReview as that identity)."""
    from tests.cluster.rest import RestClient

    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    }
    rest = RestClient(cp.api_url, ca_file=cp.ca_file, token=token)
    out = rest.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body)
    return bool(out["status"]["allowed"])


def _phase(cp: Any, ns: str, name: str) -> tuple[str, Any]:
    obj = cp.api("GET", f"/apis/beco.dev/v1alpha1/namespaces/{ns}/beconetworks/{name}")
    return obj.get("status", {}).get("phase", ""), obj.get("status", {})


def test_helm_install_and_operator_reconciles_example(
    control_plane: Any, helm: str, promtool: str, tmp_path: Path
) -> None:
    cp = control_plane
    env = {**os.environ, **cp.env()}
    # unique names: the plane is shared by the session (other areas' tests may have made a
    # beco-system namespace or a beco-operator ClusterRole of their own)
    tag = uuid.uuid4().hex[:6]
    release, release_ns, net_ns = f"ship{tag}", f"ship-{tag}-system", f"ship-{tag}-demo"
    full = f"{release}-beco-operator"  # the chart's fullname
    cp.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": release_ns}})  # fmt: skip
    install = subprocess.run(
        [helm, "install", release, str(CHART), "--namespace", release_ns,
         "--set", "image.repository=localhost/beco", "--set", "image.tag=dev",
         # two replicas: leader election with its Lease Role, and the PodDisruptionBudget
         "--set", "replicaCount=2", "--wait", "--timeout", "180s"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert "kubectl get crd beconetworks.beco.dev" in install.stdout  # NOTES.txt
    dep = cp.api("GET", f"/apis/apps/v1/namespaces/{release_ns}/deployments/{full}")
    cp.wait_for(
        lambda: (
            cp.api("GET", f"/apis/apps/v1/namespaces/{release_ns}/deployments/{full}")[
                "status"
            ].get("readyReplicas")
            == 2
        ),
        timeout=60,
        what="two operator replicas Ready on kwok",
    )
    assert cp.exists(f"/apis/policy/v1/namespaces/{release_ns}/poddisruptionbudgets/{full}")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["beco-operator"]
    # the Deployment's own arguments, with free local ports for this machine
    args = [a for a in container["args"] if not a.startswith(("--metrics-port=", "--health-port="))]
    assert "--leader-elect" in args
    assert cp.exists(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/beconetworks.beco.dev"
    )

    token = cp.service_account_token(release_ns, full)
    # no more than needed: what the operator never does is denied
    for attrs in (
        {"verb": "create", "resource": "clusterrolebindings", "group": "rbac.authorization.k8s.io"},
        {"verb": "delete", "resource": "nodes"},
        {"verb": "create", "resource": "pods", "subresource": "exec", "namespace": "kube-system"},
        {"verb": "delete", "resource": "customresourcedefinitions", "group": "apiextensions.k8s.io"},
        {"verb": "impersonate", "resource": "users"},
        {"verb": "update", "resource": "deployments", "group": "apps", "namespace": release_ns,
         "name": full},
    ):  # fmt: skip
        assert not _ssar(cp, token, attrs), f"the chart's ServiceAccount may {attrs}"
    assert _ssar(cp, token, {"verb": "watch", "resource": "beconetworks", "group": "beco.dev"})

    # As in a pod: the ServiceAccount's token and the cluster CA as a file.
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": cp.api_url,
                                                       "certificate-authority": str(cp.ca_file)}}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa",
                                                        "namespace": release_ns}}],
                "current-context": "sa",
            }
        )
    )  # fmt: skip
    metrics_port, health_port = free_port(), free_port()
    cp.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": net_ns}})  # fmt: skip
    log = open(tmp_path / "operator.log", "wb")
    op_env = {k: v for k, v in env.items() if k != "KUBECONFIG"}
    op = subprocess.Popen(
        [sys.executable, "-m", "beco_operator.main", *args, f"--metrics-port={metrics_port}",
         f"--health-port={health_port}", "--metrics-host=127.0.0.1"],
        env={**op_env, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": release_ns,
             "POD_NAME": "beco-operator-local-0"},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    try:
        example = yaml.safe_load((ROOT / "examples" / "network.yaml").read_text())
        name = example["metadata"]["name"]
        cp.api("POST", f"/apis/beco.dev/v1alpha1/namespaces/{net_ns}/beconetworks", example)
        targets = [Target("beco-operator", metrics_port, {"namespace": release_ns})]
        with Prometheus(
            promtool.replace("promtool", "prometheus"), tmp_path / "prom", targets
        ) as prom:
            deadline = time.monotonic() + 150
            while True:
                assert op.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
                phase, status = _phase(cp, net_ns, name)
                if phase == "Ready":
                    break
                assert time.monotonic() < deadline, f"not Ready: {status}"
                time.sleep(1)
            assert status["quorum"] >= 2 and status["members"] >= 3
            lease = cp.api(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{release_ns}/leases/{full}"
            )
            assert lease["spec"]["holderIdentity"] == "beco-operator-local-0"
            text = metrics_text(metrics_port)
            assert not check_metrics(promtool, text), check_metrics(promtool, text)
            # the chart's RBAC was enough: no request was refused
            refused = [ln for ln in text.splitlines()
                       if ln.startswith("beco_operator_api_errors_total") and 'code="403"' in ln]  # fmt: skip
            assert not refused, refused
            time.sleep(16)  # a rate window of scrapes
            empty = [w for w, e in gen.all_exprs() if w.startswith("operator/")
                     and not prom.query(substitute(e))]  # fmt: skip
            for a in gen.ALERTS:
                if a.name in OPERATOR_ALERTS:
                    prom.query(a.expr)
                    if not prom.query(a.query):
                        empty.append(f"alert {a.name}")
            dash = json.loads((CHART / "dashboards" / "beco-operator.json").read_text())
            for label, q in variable_queries(dash):
                if not [r for r in prom.query(q) if r["metric"].get(label)]:
                    empty.append(f"variable {label}")
            assert not empty, f"no data for: {empty}"
        # delete while the operator runs (its finalizer, if any, is removed by it)
        cp.api("DELETE", f"/apis/beco.dev/v1alpha1/namespaces/{net_ns}/beconetworks/{name}")
        cp.wait_for(
            lambda: (
                not cp.exists(f"/apis/beco.dev/v1alpha1/namespaces/{net_ns}/beconetworks/{name}")
            ),
            timeout=60,
            what="the network deleted",
        )
    finally:
        op.terminate()
        try:
            op.wait(20)
        except subprocess.TimeoutExpired:
            op.kill()
            op.wait()
        subprocess.run([helm, "uninstall", release, "-n", release_ns], env=env,
                       capture_output=True, check=False)  # fmt: skip
