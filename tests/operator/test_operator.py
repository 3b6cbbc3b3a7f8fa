"""The operator against the real control plane (kwok nodes in zones a, b, c).

Each test gets its own namespace; one operator process serves the module.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from beco_node import membership
from beco_operator.names import MANAGED_BY

from tests.cluster.plane import ControlPlane
from tests.cluster.rest import ApiError

from .harness import (
    OperatorProcess,
    PodWatch,
    dump,
    get_network,
    items,
    merge_patch,
    net_path,
    network,
    wait,
    wait_ready,
)

pytestmark = pytest.mark.controlplane

SEL = "app.kubernetes.io/managed-by=beco-operator,beco.dev/network={}"
ZONE = "topology.kubernetes.io/zone"


def create(cp: ControlPlane, ns: str, name: str = "demo", **spec: Any) -> dict[str, Any]:
    return dict(cp.api("POST", net_path(ns), network(name, ns, **spec)))


def membership_of(cp: ControlPlane, ns: str, name: str = "demo") -> membership.Membership:
    cm = cp.api("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}-membership")
    return membership.loads(cm["data"]["membership.json"])


def key_secrets(cp: ControlPlane, ns: str, name: str = "demo") -> dict[str, dict[str, Any]]:
    secs = items(cp, f"/api/v1/namespaces/{ns}/secrets", SEL.format(name) + ",beco.dev/key=node")
    return {s["metadata"]["name"]: s for s in secs}


def user_pods(cp: ControlPlane, ns: str, name: str = "demo") -> list[dict[str, Any]]:
    sel = SEL.format(name) + ",beco.dev/role=user"
    return items(cp, f"/api/v1/namespaces/{ns}/pods", sel)


def test_create_spreads_user_nodes_and_becomes_ready(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    created = create(cp, ns)
    uid = created["metadata"]["uid"]
    obj = wait_ready(cp, ns, "demo")
    st = obj["status"]
    assert (st["members"], st["quorum"], st["ready"]) == (3, 2, "3/3"), dump(st)
    assert st["readyByZone"] == {"a": 1, "b": 1, "c": 1}
    assert st["endpoint"] == f"demo.{ns}.svc:9001"
    conds = {c["type"]: c for c in st["conditions"]}
    for t in ("Ready", "QuorumAvailable", "DatabaseReady", "KeysDistributed"):
        assert conds[t]["status"] == "True", dump(conds)
        assert conds[t]["observedGeneration"] == obj["metadata"]["generation"]

    # Every child exists, is owned by the network and has the right spec.
    apps = f"/apis/apps/v1/namespaces/{ns}"
    for zone in ("a", "b", "c"):
        sts = cp.api("GET", f"{apps}/statefulsets/demo-user-{zone}")
        assert sts["metadata"]["ownerReferences"][0]["uid"] == uid
        assert sts["spec"]["updateStrategy"]["type"] == "OnDelete"
        assert sts["spec"]["template"]["spec"]["nodeSelector"] == {ZONE: zone}
        svc = cp.api("GET", f"/api/v1/namespaces/{ns}/services/demo-user-{zone}")
        assert svc["spec"]["clusterIP"] == "None"
    for role in ("validator", "sst", "postgres"):
        assert (
            cp.api("GET", f"{apps}/statefulsets/demo-{role}")["metadata"]["ownerReferences"][0][
                "uid"
            ]
            == uid
        )
    assert cp.api("GET", f"{apps}/deployments/demo-rendezvous")["status"].get("readyReplicas") == 1
    client = cp.api("GET", f"/api/v1/namespaces/{ns}/services/demo")
    assert client["spec"]["ports"][0]["port"] == 9001
    pdb = cp.api("GET", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/demo-user-nodes")
    assert pdb["spec"]["minAvailable"] == 2
    nps = items(
        cp, f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", SEL.format("demo")
    )
    assert len(nps) == 3
    pvcs = items(cp, f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    assert [p["status"]["phase"] for p in pvcs] == ["Bound"]

    # User-node pods land one per zone, as the nodes they run on say.
    zones = []
    for pod in user_pods(cp, ns):
        node = cp.api("GET", f"/api/v1/nodes/{pod['spec']['nodeName']}")
        zones.append(node["metadata"]["labels"][ZONE])
        assert pod["metadata"]["labels"]["beco.dev/zone"] == zones[-1]
    assert sorted(zones) == ["a", "b", "c"]

    # The membership publishes every member's key and the quorum.
    ms = membership_of(cp, ns)
    assert ms.quorum == 2 and len(ms.user_nodes) == 3 and len(ms.members) == 6
    secs = key_secrets(cp, ns)
    assert len(secs) == 6
    for m in ms.members:
        sec = secs[f"{m.name}-key"]
        assert base64.b64decode(sec["data"]["public_key"]) == m.public_key
        assert sec["metadata"]["annotations"]["beco.dev/peer-id"] == m.peer_id
    assert {m.zone for m in ms.user_nodes} == {"a", "b", "c"}


def test_scale_one_to_two_per_zone_keeps_old_keys(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    before = {n: s["data"]["node.key"] for n, s in key_secrets(cp, ns).items()}
    gen_before = membership_of(cp, ns).generation
    merge_patch(cp, net_path(ns, "demo"), {"spec": {"userNodes": {"perZone": 2}}})
    obj = wait_ready(cp, ns, "demo")
    assert (obj["status"]["members"], obj["status"]["quorum"]) == (6, 4)
    ms = membership_of(cp, ns)
    assert len(ms.user_nodes) == 6 and ms.quorum == 4 and ms.generation == gen_before + 1
    after = {n: s["data"]["node.key"] for n, s in key_secrets(cp, ns).items()}
    assert len(after) == 9
    for n, key in before.items():
        assert after[n] == key, f"key of {n} changed on scale-up"
    assert sorted(p["metadata"]["labels"]["beco.dev/zone"] for p in user_pods(cp, ns)) == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    # The scale subresource speaks the same field; scaling back down removes members and keys.
    scale = cp.api("GET", net_path(ns, "demo") + "/scale")
    assert scale["spec"]["replicas"] == 2
    scale["spec"]["replicas"] = 1
    cp.api("PUT", net_path(ns, "demo") + "/scale", scale)
    obj = wait_ready(cp, ns, "demo")
    assert (obj["status"]["members"], obj["status"]["quorum"]) == (3, 2)
    ms = membership_of(cp, ns)
    assert len(ms.user_nodes) == 3 and ms.quorum == 2
    wait(lambda: len(key_secrets(cp, ns)) == 6, 60, "the departed members' keys to go")
    for n, s in key_secrets(cp, ns).items():
        assert s["data"]["node.key"] == before[n], f"key of {n} changed on scale-down"


def test_scale_down_keeps_departing_pods_until_the_membership_settled(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    """Nodes still on the old quorum need the departing members' votes (issue 8, item 8).

    The operator cannot read pods' metrics from outside the cluster, so it waits the bounded
    ``--membership-wait`` (3 s for this module) after publishing before shrinking.
    """
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, userNodes={"perZone": 2})
    wait_ready(cp, ns, "demo")
    gen = membership_of(cp, ns).generation
    merge_patch(cp, net_path(ns, "demo"), {"spec": {"userNodes": {"perZone": 1}}})
    obj = wait_ready(cp, ns, "demo", timeout=120)
    assert (obj["status"]["members"], obj["status"]["quorum"]) == (3, 2)
    cm = cp.api("GET", f"/api/v1/namespaces/{ns}/configmaps/demo-membership")
    assert membership.loads(cm["data"]["membership.json"]).generation == gen + 1
    published = cm["metadata"]["annotations"]["beco.dev/published-at"]
    events = items(cp, f"/api/v1/namespaces/{ns}/events")
    shrunk = sorted(
        e["lastTimestamp"]
        for e in events
        if e.get("reason") == "ChildrenApplied"
        and "StatefulSet/demo-user-a" in e.get("message", "")
        and (e.get("lastTimestamp") or "") >= published
    )
    assert shrunk, dump([e["message"] for e in events])

    def secs(stamp: str) -> float:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))

    # one-second timestamps: at least the 3 s wait minus the resolution
    assert secs(shrunk[0]) - secs(published) >= 2, (published, shrunk)
    wait(lambda: len(user_pods(cp, ns)) == 3, 60, "the departing pods to go")
    wait(lambda: len(key_secrets(cp, ns)) == 6, 60, "the departed members' keys to go")


def test_deleted_or_edited_child_is_restored(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    apps = f"/apis/apps/v1/namespaces/{ns}"
    old = cp.api("GET", f"{apps}/statefulsets/demo-user-b")["metadata"]["uid"]
    cp.api("DELETE", f"{apps}/statefulsets/demo-user-b")
    cp.api("DELETE", f"/api/v1/namespaces/{ns}/services/demo")
    wait(
        lambda: cp.api("GET", f"{apps}/statefulsets/demo-user-b")["metadata"]["uid"] != old,
        60,
        "the user StatefulSet of zone b to come back",
    )
    wait(lambda: cp.exists(f"/api/v1/namespaces/{ns}/services/demo"), 60, "the client Service")
    # Edits are taken back: a scaled user StatefulSet and a changed Service selector.
    merge_patch(cp, f"{apps}/statefulsets/demo-user-a", {"spec": {"replicas": 3}})
    comp = "app.kubernetes.io/component"
    svc = f"/api/v1/namespaces/{ns}/services/demo-validator"
    merge_patch(cp, svc, {"spec": {"selector": {comp: "hacked"}}})
    wait(
        lambda: cp.api("GET", f"{apps}/statefulsets/demo-user-a")["spec"]["replicas"] == 1,
        60,
        "the edited replica count to be restored",
    )
    wait(
        lambda: cp.api("GET", svc)["spec"]["selector"][comp] == "validator",
        60,
        "the edited selector to be restored",
    )
    wait_ready(cp, ns, "demo")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"quorum": 1}, "more than half"),
        ({"quorum": 4}, "no larger than the number of user nodes"),
        ({"zones": ["a", "a"]}, "zones must be unique"),
        ({"zones": []}, "spec.zones"),
        (
            {"database": {"managed": {}, "external": {"secretRef": {"name": "x"}}}},
            "exactly one of managed or external",
        ),
        ({"userNodes": {"perZone": 0}}, "perZone"),
        ({"restore": {"pvc": "b", "path": "../etc/x.dump"}}, "spec.restore.path"),
        ({"restore": {"path": "demo/20261130T080000Z.dump"}}, "pvc: Required value"),
        (
            {
                "database": {"external": {"secretRef": {"name": "x"}}},
                "restore": {"pvc": "b", "path": "demo/20261130T080000Z.dump"},
            },
            "restore needs a managed database",
        ),
    ],
)
def test_invalid_spec_is_refused_with_its_reason(
    beco_crd: ControlPlane, k8s_namespace: str, spec: dict[str, Any], message: str
) -> None:
    cp, ns = beco_crd, k8s_namespace
    with pytest.raises(ApiError) as err:
        create(cp, ns, "bad", **spec)
    assert err.value.status == 422
    assert message in str(err.value), str(err.value)


def test_immutable_and_quorum_breaking_updates_are_refused(
    beco_crd: ControlPlane, k8s_namespace: str
) -> None:
    cp, ns = beco_crd, k8s_namespace
    create(cp, ns, "imm", quorum=2)
    with pytest.raises(ApiError) as err:
        merge_patch(
            cp, net_path(ns, "imm"), {"spec": {"database": {"managed": {"storage": "5Gi"}}}}
        )
    assert "immutable" in str(err.value)
    with pytest.raises(ApiError) as err:
        merge_patch(
            cp,
            net_path(ns, "imm"),
            {"spec": {"database": {"managed": None, "external": {"secretRef": {"name": "pg"}}}}},
        )
    assert "cannot switch" in str(err.value)
    # Scaling 3 -> 6 user nodes with a fixed quorum of 2 would lose the majority: refused.
    with pytest.raises(ApiError) as err:
        merge_patch(cp, net_path(ns, "imm"), {"spec": {"userNodes": {"perZone": 2}}})
    assert "more than half" in str(err.value)
    # restore is for creation only: a live network's log is never replaced by a backup
    with pytest.raises(ApiError) as err:
        merge_patch(
            cp,
            net_path(ns, "imm"),
            {"spec": {"restore": {"pvc": "b", "path": "imm/20261130T080000Z.dump"}}},
        )
    assert "set when the network is created" in str(err.value)


def test_what_the_schema_lets_through_becomes_a_condition(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, "ext", database={"external": {"secretRef": {"name": "missing-dsn"}}})

    def db_condition() -> dict[str, Any] | None:
        st = get_network(cp, ns, "ext").get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions", [])}
        c = conds.get("DatabaseReady")
        return c if c and c["status"] == "False" and "missing-dsn" in c["message"] else None

    cond = wait(db_condition, 60, "DatabaseReady=False naming the missing Secret")
    assert cond["reason"] == "DatabaseNotReady"
    assert get_network(cp, ns, "ext")["status"]["phase"] != "Ready"
    # Once the Secret exists the network becomes Ready.
    cp.api(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "missing-dsn"},
            "stringData": {"dsn": "postgresql://x@db/beco"},
        },
    )
    wait_ready(cp, ns, "ext")


def test_delete_removes_children(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, database={"managed": {"reclaimPolicy": "Delete"}})
    wait_ready(cp, ns, "demo")
    cp.api("DELETE", net_path(ns, "demo"))

    def gone() -> bool:
        left = []
        for p in (
            f"/apis/apps/v1/namespaces/{ns}/statefulsets",
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            f"/api/v1/namespaces/{ns}/services",
            f"/api/v1/namespaces/{ns}/configmaps",
            f"/api/v1/namespaces/{ns}/secrets",
            f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
            f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
        ):
            left += [o["metadata"]["name"] for o in items(cp, p, SEL.format("demo"))]
        return not left

    wait(gone, 90, "every child to be garbage-collected")
    # reclaimPolicy Delete: the database volume claim goes too.
    pvcs = f"/api/v1/namespaces/{ns}/persistentvolumeclaims"
    wait(lambda: not items(cp, pvcs), 90, "the database PVC to be deleted")


def test_delete_keeps_the_database_volume_by_default(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    apps = f"/apis/apps/v1/namespaces/{ns}/statefulsets"
    cp.api("DELETE", net_path(ns, "demo"))
    wait(lambda: not items(cp, apps, SEL.format("demo")), 90, "the StatefulSets to go")
    time.sleep(3)
    pvcs = items(cp, f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    assert [p["metadata"]["name"] for p in pvcs] == ["data-demo-postgres-0"]
    assert not pvcs[0]["metadata"].get("deletionTimestamp")


def test_a_recreated_network_reuses_its_retained_database_password(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    """The retained volume was initialised with a password: the new network must use it."""
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    secret = f"/api/v1/namespaces/{ns}/secrets/demo-postgres"
    before = cp.api("GET", secret)
    # The SST's key signed the retained log's tree heads, and the CA issued the certificate
    # in that key's Secret: both must be found again, as the password is.
    sst_key = f"/api/v1/namespaces/{ns}/secrets/demo-sst-key"
    ca = f"/api/v1/namespaces/{ns}/secrets/demo-ca"
    key_before, ca_before = cp.api("GET", sst_key), cp.api("GET", ca)
    user_key = f"/api/v1/namespaces/{ns}/secrets/demo-user-a-0-key"
    user_key_before = cp.api("GET", user_key)
    cp.api("DELETE", net_path(ns, "demo"))
    apps = f"/apis/apps/v1/namespaces/{ns}/statefulsets"
    wait(lambda: not items(cp, apps, SEL.format("demo")), 90, "the StatefulSets to go")
    time.sleep(2)  # the garbage collector had its chance at the Secret
    kept = cp.api("GET", secret)
    assert kept["metadata"]["uid"] == before["metadata"]["uid"]
    assert not kept["metadata"].get("ownerReferences")
    for p in (sst_key, ca):
        assert cp.api("GET", p)["metadata"].get("ownerReferences") is None
    secrets = f"/api/v1/namespaces/{ns}/secrets"
    wait(
        lambda: (
            user_key_before["metadata"]["name"]
            not in [s["metadata"]["name"] for s in items(cp, secrets)]
        ),
        90,
        "the user node's key (not tied to the log) to go with the network",
    )
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    again = cp.api("GET", secret)
    assert again["data"]["password"] == before["data"]["password"]
    assert again["data"]["dsn"] == before["data"]["dsn"]
    assert cp.api("GET", sst_key)["data"] == key_before["data"]
    assert cp.api("GET", ca)["data"] == ca_before["data"]
    assert cp.api("GET", user_key)["data"] != user_key_before["data"]  # a fresh key
    sts = cp.api("GET", f"{apps}/demo-postgres")
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "demo-postgres", "key": "password"} in [
        e.get("valueFrom", {}).get("secretKeyRef") for e in env
    ]


def test_a_dsn_naming_the_headless_postgres_service_moves_to_the_cluster_ip_one(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    """A database Secret written before the Service ``demo-database`` existed (its DSN names
    the headless ``demo-postgres``) keeps its password and gets the cluster IP as host."""
    cp, ns = control_plane, k8s_namespace
    old = f"postgresql://beco:pw-1@demo-postgres.{ns}.svc:5432/beco"
    cp.api(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-postgres"},
            "stringData": {"password": "pw-1", "dsn": old},
        },
    )
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    data = cp.api("GET", f"/api/v1/namespaces/{ns}/secrets/demo-postgres")["data"]
    assert base64.b64decode(data["password"]) == b"pw-1"
    assert base64.b64decode(data["dsn"]).decode() == old.replace("demo-postgres", "demo-database")
    svc = cp.api("GET", f"/api/v1/namespaces/{ns}/services/demo-database")
    assert svc["spec"]["clusterIP"] not in ("", "None")


def test_operator_restart_changes_no_secret(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    secrets_path = f"/api/v1/namespaces/{ns}/secrets"

    def snapshot() -> dict[str, tuple[str, str]]:
        return {
            s["metadata"]["name"]: (s["metadata"]["resourceVersion"], s["metadata"]["uid"])
            for s in items(cp, secrets_path)
            if s["metadata"]["name"].startswith("demo-")
        }

    before = snapshot()
    assert len(before) == 9  # six peer keys, the CA, the client certificate, the Postgres password
    beco_operator.kill()  # as a crash would
    beco_operator.start()
    wait(
        lambda: beco_operator.metric("beco_operator_reconciles_total") >= 2,
        60,
        "reconciles after the restart",
    )
    wait_ready(cp, ns, "demo")
    assert snapshot() == before


def test_image_change_rolls_user_nodes_one_at_a_time_keeping_quorum(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, userNodes={"perZone": 2})
    wait_ready(cp, ns, "demo")
    quorum = 4
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in user_pods(cp, ns)}
    assert len(before) == 6

    # Watch the user pods through the API's watch stream for the whole rollout.
    watch = PodWatch(cp, ns, SEL.format("demo") + ",beco.dev/role=user")
    watch.start()
    time.sleep(0.5)
    merge_patch(cp, net_path(ns, "demo"), {"spec": {"image": {"tag": "0.2.0"}}})

    def rolled() -> bool:
        pods = user_pods(cp, ns)
        return (
            len(pods) == 6
            and all(p["metadata"]["uid"] != before.get(p["metadata"]["name"]) for p in pods)
            and all(p["spec"]["containers"][0]["image"].endswith(":0.2.0") for p in pods)
        )

    wait(rolled, 180, "every user node to run the new image")
    obj = wait_ready(cp, ns, "demo")
    time.sleep(1.0)
    watch.stop()
    assert watch.ready_counts, "the watch saw no pod event"
    low = min(watch.ready_counts)
    assert low >= quorum, f"ready user nodes fell to {low} < quorum {quorum}"
    assert max(watch.unready_counts) <= 1, (
        f"{max(watch.unready_counts)} user nodes were down at once"
    )
    assert obj["status"]["rollout"]["pending"] == 0
    assert beco_operator.metric("beco_operator_user_node_restarts_total") >= 6


def test_key_rotation_on_request_keeps_quorum(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    old = {m.name: m.public_key for m in membership_of(cp, ns).members}
    watch = PodWatch(cp, ns, SEL.format("demo") + ",beco.dev/role=user")
    watch.start()
    time.sleep(0.5)
    merge_patch(
        cp, net_path(ns, "demo"), {"metadata": {"annotations": {"beco.dev/rotate-keys": "r1"}}}
    )

    def rotated() -> bool:
        secs = key_secrets(cp, ns)
        return all(
            s["metadata"]["annotations"].get("beco.dev/rotation-token") == "r1"
            for s in secs.values()
        )

    wait(rotated, 180, "every key to be rotated")
    obj = wait_ready(cp, ns, "demo")
    watch.stop()
    new = {m.name: m.public_key for m in membership_of(cp, ns).members}
    assert set(new) == set(old)
    # the SST's key is its log's identity: kept; every other member's key is new
    assert {n for n in old if new[n] != old[n]} == set(old) - {"demo-sst"}
    assert min(watch.ready_counts) >= 2, "rotation dropped below the quorum"
    assert obj["status"]["membershipGeneration"] >= 6  # one generation per replaced key


def test_rollout_waits_when_a_restart_would_break_the_quorum(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, quorum=3)  # 3 of 3: no user node may go down
    wait_ready(cp, ns, "demo")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in user_pods(cp, ns)}
    merge_patch(cp, net_path(ns, "demo"), {"spec": {"image": {"tag": "0.2.0"}}})

    def waiting() -> dict[str, Any] | None:
        st = get_network(cp, ns, "demo").get("status") or {}
        c = {c["type"]: c for c in st.get("conditions", [])}.get("RolloutWaiting")
        return c if c and c["status"] == "True" else None

    cond = wait(waiting, 60, "RolloutWaiting=True")
    assert cond["reason"] == "WaitingForQuorum"
    assert "quorum 3" in cond["message"]
    wait(
        lambda: beco_operator.metric("beco_operator_rollout_waiting", {"namespace": ns}) == 1,
        30,
        "the rollout-waiting metric",
    )
    st = get_network(cp, ns, "demo")["status"]
    assert st["rollout"]["pending"] == 3 and st["phase"] != "Ready"
    time.sleep(2)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in user_pods(cp, ns)} == before
    # Lowering the quorum to 2 of 3 lets the rollout proceed, one node at a time.
    merge_patch(cp, net_path(ns, "demo"), {"spec": {"quorum": 2}})
    obj = wait_ready(cp, ns, "demo")
    assert obj["status"]["rollout"] == {"pending": 0, "reason": "", "waiting": False}
    assert all(p["metadata"]["uid"] != before[p["metadata"]["name"]] for p in user_pods(cp, ns))


def test_zone_without_nodes_is_degraded_with_the_reason(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns, zones=["a", "b", "z"])

    def degraded() -> dict[str, Any] | None:
        st = get_network(cp, ns, "demo").get("status") or {}
        ok = st.get("phase") == "Degraded" and st.get("readyByZone") == {"a": 1, "b": 1, "z": 0}
        return st if ok else None

    # Degraded from the start (no node in z), and still once a and b are up.
    st = wait(degraded, 90, "phase Degraded with zones a and b ready")
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["reason"] == "ZoneWithoutNodes", dump(ready)
    assert "zone(s) z" in ready["message"]
    assert st["readyByZone"] == {"a": 1, "b": 1, "z": 0}
    # Two of three user nodes still make the quorum of 2.
    assert {c["type"]: c for c in st["conditions"]}["QuorumAvailable"]["status"] == "True"


def test_operator_killed_mid_reconcile_converges_without_churning_keys(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    first = wait(lambda: key_secrets(cp, ns), 30, "the first key Secrets")
    beco_operator.kill()  # somewhere in the middle of the first reconciles
    seen = {
        n: (s["metadata"]["uid"], s["data"]["node.key"]) for n, s in key_secrets(cp, ns).items()
    }
    assert seen and len(first) >= 1
    beco_operator.start()
    wait_ready(cp, ns, "demo")
    after = key_secrets(cp, ns)
    assert len(after) == 6
    for n, (uid, key) in seen.items():
        assert (after[n]["metadata"]["uid"], after[n]["data"]["node.key"]) == (uid, key), n
    ms = membership_of(cp, ns)
    assert len({m.peer_id for m in ms.members}) == 6


def test_several_networks_in_several_namespaces(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp = control_plane
    other = f"{k8s_namespace}-b"
    cp.rest.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
    )
    wait(lambda: cp.exists(f"/api/v1/namespaces/{other}/serviceaccounts/default"), 30, "sa")
    try:
        nets = [(k8s_namespace, "one"), (k8s_namespace, "two"), (other, "one")]
        for ns, name in nets:
            create(cp, ns, name, userNodes={"perZone": 1 if name == "one" else 2})
        for ns, name in nets:
            st = wait_ready(cp, ns, name)["status"]
            assert st["members"] == (3 if name == "one" else 6)
            ms = membership_of(cp, ns, name)
            assert ms.network == name
            assert all(m.address.endswith(f".{ns}.svc:9001") for m in ms.members)
        # Same name in two namespaces: separate keys.
        a = {m.public_key for m in membership_of(cp, k8s_namespace, "one").members}
        b = {m.public_key for m in membership_of(cp, other, "one").members}
        assert not a & b
    finally:
        cp.api("DELETE", f"/api/v1/namespaces/{other}")


def test_a_converged_network_costs_no_writes(
    control_plane: ControlPlane, k8s_namespace: str, beco_operator: OperatorProcess
) -> None:
    cp, ns = control_plane, k8s_namespace
    create(cp, ns)
    wait_ready(cp, ns, "demo")
    kinds = (
        f"/apis/apps/v1/namespaces/{ns}/statefulsets",
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        f"/api/v1/namespaces/{ns}/configmaps",
        f"/api/v1/namespaces/{ns}/secrets",
        f"/api/v1/namespaces/{ns}/events",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
        f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    )

    def ours(kind: str, o: dict[str, Any]) -> bool:
        # Kubernetes' own controllers post Events about the children too (a pod created,
        # a replica set scaled), on their own schedule: only the operator's writes count.
        return not kind.endswith("/events") or o.get("source", {}).get("component") == MANAGED_BY

    def versions() -> dict[str, str]:
        return {
            f"{k}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for k in kinds
            for o in items(cp, k)
            if ours(k, o)
        }

    # Settled: the rollout's last writes (events, status) are over when nothing moves for 3 s.
    before, settled_at = versions(), time.monotonic()
    deadline = settled_at + 60
    while time.monotonic() - settled_at < 3:
        assert time.monotonic() < deadline, "the network's objects never settled after Ready"
        time.sleep(0.5)
        now = versions()
        if now != before:
            before, settled_at = now, time.monotonic()
    assert any("/events/" in k for k in before), "the operator's own Events are counted"
    reconciles = beco_operator.metric("beco_operator_reconciles_total")
    # Wake the network's worker twice without changing anything it owns.
    merge_patch(cp, net_path(ns, "demo"), {"metadata": {"labels": {"team": "identity"}}})
    wait(
        lambda: beco_operator.metric("beco_operator_reconciles_total") > reconciles,
        30,
        "a reconcile",
    )
    svc = f"/api/v1/namespaces/{ns}/services/demo"
    merge_patch(cp, svc, {"metadata": {"annotations": {"note": "not the operator's field"}}})
    wait(
        lambda: beco_operator.metric("beco_operator_reconciles_total") > reconciles + 1,
        30,
        "another reconcile",
    )
    time.sleep(1)
    assert versions() == before
    status = get_network(cp, ns, "demo")["status"]
    assert status["phase"] == "Ready"
