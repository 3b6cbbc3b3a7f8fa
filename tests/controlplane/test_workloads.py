"""Workloads on the shared control plane: the scheduler, the controllers and kwok together."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster import STORAGE_CLASS, ZONE_LABEL, ApiError, ControlPlane

pytestmark = pytest.mark.controlplane

IMAGE = "registry.invalid/beco/none:0"  # kwok never pulls images


def _pods(cp: ControlPlane, ns: str, selector: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cp.api(
        "GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}"
    )["items"]
    return pods


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    conds = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def _wait_pods_ready(cp: ControlPlane, ns: str, selector: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal found
        found = [p for p in _pods(cp, ns, selector) if "deletionTimestamp" not in p["metadata"]]
        return len(found) == count and all(_ready(p) for p in found)

    cp.wait_for(check, timeout=90, what=f"{count} ready pods {selector} in {ns}")
    return found


def _zone_of(cp: ControlPlane, node: str) -> str:
    return str(cp.api("GET", f"/api/v1/nodes/{node}")["metadata"]["labels"][ZONE_LABEL])


def _container() -> dict[str, Any]:
    return {"name": "app", "image": IMAGE}


def test_nodes_labelled_by_zone(control_plane: ControlPlane) -> None:
    nodes = control_plane.api("GET", "/api/v1/nodes")["items"]
    zones = sorted(n["metadata"]["labels"][ZONE_LABEL] for n in nodes)
    expected = sorted(z for z in control_plane.zones for _ in range(control_plane.nodes_per_zone))
    assert zones == expected


def test_topology_spread_one_pod_per_zone(control_plane: ControlPlane, k8s_namespace: str) -> None:
    cp, ns = control_plane, k8s_namespace
    labels = {"app": "spread"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": len(cp.zones),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [_container()],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": ZONE_LABEL,
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                },
            },
        },
    }
    cp.api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)
    pods = _wait_pods_ready(cp, ns, "app=spread", len(cp.zones))
    zones = sorted(_zone_of(cp, p["spec"]["nodeName"]) for p in pods)
    assert zones == sorted(cp.zones)
    assert all(p["status"].get("podIP") for p in pods)
    cp.wait_for(
        lambda: (
            cp.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/spread")
            .get("status", {})
            .get("readyReplicas")
            == len(cp.zones)
        ),
        timeout=60,
        what="deployment readyReplicas",
    )


def test_topology_spread_is_enforced(control_plane: ControlPlane, k8s_namespace: str) -> None:
    """The constraint is a hard rule of the real scheduler, not luck of default spreading: pods
    allowed only in two zones, with the third counted as a domain, cannot exceed skew 1."""
    cp, ns = control_plane, k8s_namespace
    if len(cp.zones) < 3:
        pytest.skip("needs three zones")
    allowed = list(cp.zones[:2])
    labels = {"app": "strict"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "strict"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [_container()],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": ZONE_LABEL, "operator": "In", "values": allowed}
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": ZONE_LABEL,
                            "whenUnsatisfiable": "DoNotSchedule",
                            "nodeAffinityPolicy": "Ignore",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                },
            },
        },
    }
    cp.api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)

    def unschedulable() -> list[dict[str, Any]]:
        out = []
        for pod in _pods(cp, ns, "app=strict"):
            for c in pod.get("status", {}).get("conditions") or []:
                if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                    out.append(c)
        return out

    cp.wait_for(lambda: len(unschedulable()) == 1, timeout=90, what="one unschedulable pod")
    assert "topology spread" in unschedulable()[0]["message"]
    running = [p for p in _pods(cp, ns, "app=strict") if p["spec"].get("nodeName")]
    assert sorted(_zone_of(cp, p["spec"]["nodeName"]) for p in running) == sorted(allowed)


def test_statefulset_pods_ready_and_pvcs_bound(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    cp, ns = control_plane, k8s_namespace
    labels = {"app": "db"}
    cp.api(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 5432}]},
        },
    )
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [_container()]}},
            # No storageClassName: the default class must be applied.
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    cp.api("POST", f"/apis/apps/v1/namespaces/{ns}/statefulsets", sts)
    _wait_pods_ready(cp, ns, "app=db", 2)

    def bound() -> bool:
        pvcs = cp.api("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]
        return len(pvcs) == 2 and all(p.get("status", {}).get("phase") == "Bound" for p in pvcs)

    cp.wait_for(bound, timeout=60, what="PVCs bound")
    pvcs = cp.api("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]
    assert sorted(p["metadata"]["name"] for p in pvcs) == ["data-db-0", "data-db-1"]
    assert {p["spec"]["storageClassName"] for p in pvcs} == {STORAGE_CLASS}
    for pvc in pvcs:
        pv = cp.api("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]


def test_garbage_collector_removes_dependents(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    cp, ns = control_plane, k8s_namespace
    base = f"/api/v1/namespaces/{ns}/configmaps"
    owner = cp.api(
        "POST", base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for i in range(3):
        cp.api(
            "POST",
            base,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"dep-{i}", "ownerReferences": [ref]},
            },
        )
    cp.api(
        "POST", base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bystander"}}
    )
    cp.api("DELETE", f"{base}/owner", {"propagationPolicy": "Background"})

    def dependents_gone() -> bool:
        names = {c["metadata"]["name"] for c in cp.api("GET", base)["items"]}
        return not names & {"owner", "dep-0", "dep-1", "dep-2"}

    cp.wait_for(dependents_gone, timeout=60, what="dependents garbage-collected")
    assert cp.exists(f"{base}/bystander")


def test_foreground_deletion_of_deployment_removes_pods(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    """Deployment -> ReplicaSet -> Pods: the whole chain goes, pods via kwok's delete stage."""
    cp, ns = control_plane, k8s_namespace
    labels = {"app": "chain"}
    cp.api(
        "POST",
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "chain"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [_container()]},
                },
            },
        },
    )
    _wait_pods_ready(cp, ns, "app=chain", 2)
    cp.api(
        "DELETE",
        f"/apis/apps/v1/namespaces/{ns}/deployments/chain",
        {"propagationPolicy": "Foreground"},
    )

    def all_gone() -> bool:
        rs = cp.api("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
        dep = cp.exists(f"/apis/apps/v1/namespaces/{ns}/deployments/chain")
        return not dep and not rs and not _pods(cp, ns, "app=chain")

    cp.wait_for(all_gone, timeout=90, what="deployment, replicasets and pods deleted")


def test_service_account_token_rbac(control_plane: ControlPlane, k8s_namespace: str) -> None:
    """A ServiceAccount token authenticates; RBAC decides (denied, then allowed by a RoleBinding)."""
    cp, ns = control_plane, k8s_namespace
    cp.api(
        "POST",
        f"/api/v1/namespaces/{ns}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
    )
    token = cp.service_account_token(ns, "reader")
    from tests.cluster import RestClient

    as_sa = RestClient(cp.api_url, cp.ca_file, token=token)
    with pytest.raises(ApiError) as denied:
        as_sa.get(f"/api/v1/namespaces/{ns}/configmaps")
    assert denied.value.status == 403
    assert f"system:serviceaccount:{ns}:reader" in str(denied.value)

    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    cp.api(
        "POST",
        f"{rbac}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-cm"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    cp.api(
        "POST",
        f"{rbac}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "read-cm"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )

    def allowed() -> bool:
        try:
            as_sa.get(f"/api/v1/namespaces/{ns}/configmaps")
        except ApiError:
            return False
        return True

    cp.wait_for(allowed, timeout=30, what="RBAC to allow the ServiceAccount")
    with pytest.raises(ApiError) as still_denied:
        as_sa.get(f"/api/v1/namespaces/{ns}/secrets")
    assert still_denied.value.status == 403


def test_kubernetes_client_and_kubeconfig(control_plane: ControlPlane) -> None:
    """The admin kubeconfig works with the official Python client."""
    from kubernetes import client

    api = client.CoreV1Api(control_plane.kubernetes_client())
    names = {n.metadata.name for n in api.list_node().items if n.metadata}
    assert names == set(control_plane.node_names)
    with pytest.raises(client.ApiException) as err:
        api.read_namespace("does-not-exist")
    assert err.value.status == 404


def test_api_error_is_clear(control_plane: ControlPlane) -> None:
    with pytest.raises(ApiError) as err:
        control_plane.api("GET", "/api/v1/namespaces/nope/configmaps/nope")
    assert err.value.status == 404
    assert "not found" in str(err.value)
