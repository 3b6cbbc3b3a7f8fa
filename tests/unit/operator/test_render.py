from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from beco_operator import diff, names, render
from beco_operator.names import Obj

from .conftest import make_spec


def _render(**overrides: Any) -> list[Obj]:
    return render.render(
        "demo", "ns", "uid-1", make_spec(**overrides), singleton_key_hashes={}, pod_monitor=True
    )


def _by(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_children_of_the_default_network() -> None:
    objs = _by(_render())
    assert set(objs) == {
        ("Deployment", "demo-rendezvous"),
        ("Service", "demo-rendezvous"),
        ("StatefulSet", "demo-validator"),
        ("Service", "demo-validator"),
        ("StatefulSet", "demo-sst"),
        ("Service", "demo-sst"),
        ("StatefulSet", "demo-user-a"),
        ("Service", "demo-user-a"),
        ("StatefulSet", "demo-user-b"),
        ("Service", "demo-user-b"),
        ("StatefulSet", "demo-user-c"),
        ("Service", "demo-user-c"),
        ("Service", "demo"),
        ("PodDisruptionBudget", "demo-user-nodes"),
        ("StatefulSet", "demo-postgres"),
        ("Service", "demo-postgres"),
        ("NetworkPolicy", "demo-members-only"),
        ("NetworkPolicy", "demo-user-nodes"),
        ("NetworkPolicy", "demo-postgres"),
        ("PodMonitor", "demo"),
    }
    for o in objs.values():
        assert o["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert o["metadata"]["ownerReferences"][0]["controller"] is True
        labels = o["metadata"]["labels"]
        for k in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/component",
        ):
            assert k in labels, (o["kind"], o["metadata"]["name"], k)


def test_user_nodes_pinned_per_zone_and_restarted_by_the_operator() -> None:
    objs = _by(_render(userNodes={"perZone": 2}))
    for zone in ("a", "b", "c"):
        sts = objs[("StatefulSet", f"demo-user-{zone}")]
        assert sts["spec"]["replicas"] == 2
        assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert sts["spec"]["serviceName"] == f"demo-user-{zone}"
        pod = sts["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {names.TOPOLOGY_ZONE: zone}
        assert sts["spec"]["template"]["metadata"]["labels"][names.ZONE_LABEL] == zone
        secrets = [s["secret"]["name"] for s in pod["volumes"][1]["projected"]["sources"]]
        assert secrets == [f"demo-user-{zone}-0-key", f"demo-user-{zone}-1-key"]
        assert objs[("Service", f"demo-user-{zone}")]["spec"]["clusterIP"] == "None"
        args = pod["containers"][0]["args"]
        assert "--role=user" in args and "--tls-ca=/etc/beco/membership/ca.crt" in args
    client = objs[("Service", "demo")]
    assert client["spec"]["ports"][0]["port"] == 9001
    assert client["spec"]["selector"] == names.selector_labels("demo", "user")
    assert objs[("PodDisruptionBudget", "demo-user-nodes")]["spec"]["minAvailable"] == 4


def test_singletons_mount_only_their_own_key() -> None:
    objs = _by(_render())
    for role in ("validator", "sst"):
        pod = objs[("StatefulSet", f"demo-{role}")]["spec"]["template"]["spec"]
        assert [s["secret"]["name"] for s in pod["volumes"][1]["projected"]["sources"]] == [
            f"demo-{role}-key"
        ]
    sst_env = objs[("StatefulSet", "demo-sst")]["spec"]["template"]["spec"]["containers"][0]["env"]
    dsn = next(e for e in sst_env if e["name"] == "BECO_DATABASE_URL")
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "demo-postgres", "key": "dsn"}


def test_external_database_has_no_postgres_and_points_at_the_secret() -> None:
    objs = _by(_render(database={"external": {"secretRef": {"name": "pg", "key": "url"}}}))
    assert ("StatefulSet", "demo-postgres") not in objs
    env = objs[("StatefulSet", "demo-sst")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert next(e for e in env if e["name"] == "BECO_DATABASE_URL")["valueFrom"][
        "secretKeyRef"
    ] == {"name": "pg", "key": "url"}


def test_switches() -> None:
    objs = _by(_render(monitoring={"enabled": False}, networkPolicy={"enabled": False}))
    assert not [k for k in objs if k[0] in ("PodMonitor", "NetworkPolicy")]
    without_crd = render.render(
        "demo", "ns", "u", make_spec(), singleton_key_hashes={}, pod_monitor=False
    )
    assert not [o for o in without_crd if o["kind"] == "PodMonitor"]


def test_pod_monitor_sets_the_dashboards_target_labels() -> None:
    pm = _by(_render())[("PodMonitor", "demo")]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_beco_dev_network"],
            "targetLabel": "network",
        },
        {"sourceLabels": ["__meta_kubernetes_pod_label_beco_dev_role"], "targetLabel": "role"},
        {"sourceLabels": ["__meta_kubernetes_pod_label_beco_dev_zone"], "targetLabel": "zone"},
    ]
    # the pods carry the labels the relabelings read, with the values the dashboards use
    user = _by(_render())[("StatefulSet", "demo-user-a")]["spec"]["template"]["metadata"]
    assert user["labels"][names.NETWORK_LABEL] == "demo"
    assert user["labels"][names.ROLE_LABEL] == "user"
    assert user["labels"][names.ZONE_LABEL] == "a"


def test_postgres_reclaim_policy() -> None:
    objs = _by(_render(database={"managed": {"reclaimPolicy": "Delete", "storage": "2Gi"}}))
    sts = objs[("StatefulSet", "demo-postgres")]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    )


def test_image_change_changes_the_config_hash_but_scaling_does_not() -> None:
    def user_hash(**kw: Any) -> str:
        sts = _by(_render(**kw))[("StatefulSet", "demo-user-a")]
        return str(sts["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION])

    base = user_hash()
    assert user_hash(userNodes={"perZone": 2}) == base
    assert user_hash(image={"tag": "0.2.0"}) != base


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"database": {"external": {"secretRef": {"name": "pg"}}}},
        {"service": {"type": "LoadBalancer", "port": 443}},
    ],
)
def test_every_child_validates_against_the_kubernetes_schemas(overrides: dict[str, Any]) -> None:
    for obj in _render(**overrides):
        if obj["kind"] == "PodMonitor":
            continue
        kubernetes_validate.validate(obj, "1.34", strict=True)


def test_diff_ignores_server_defaults_and_catches_edits() -> None:
    want = diff.with_hash(_by(_render())[("Service", "demo")])
    have: Obj = {
        **want,
        "metadata": {**want["metadata"], "resourceVersion": "7"},
        "spec": {**want["spec"], "clusterIP": "10.0.0.9", "sessionAffinity": "None"},
    }
    assert not diff.needs_apply(want, have)
    edited = {**have, "spec": {**have["spec"], "selector": {"x": "y"}}}
    assert diff.needs_apply(want, edited)
    assert diff.needs_apply(want, None)
    stale = {
        **have,
        "metadata": {**have["metadata"], "annotations": {names.APPLIED_HASH_ANNOTATION: "old"}},
    }
    assert diff.needs_apply(want, stale)
