from __future__ import annotations

import base64
import json
import os
from typing import Any

import kubernetes_validate
import pytest
from beco_operator import diff, keyring, names, render
from beco_operator.names import Obj
from beco_operator.spec import ManagedDatabase

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
        ("Service", "demo-database"),
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


def test_the_dsn_names_a_cluster_ip_service_of_the_postgres_pod() -> None:
    """Not the headless Service: its DNS answer changes (and is cached) when the pod is
    replaced, which kept the SST from reconnecting for 30-60 s on a real cluster."""
    objs = _by(_render())
    sec = render.postgres_secret("demo", "ns", "0.1.0", "pw")
    dsn = base64.b64decode(sec["data"]["dsn"]).decode()
    host = dsn.split("@", 1)[1].split(":", 1)[0]
    name, ns, svc_suffix = host.split(".")
    assert (ns, svc_suffix) == ("ns", "svc")
    svc = objs[("Service", name)]
    assert svc["spec"].get("clusterIP") != "None" and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["publishNotReadyAddresses"] is True  # the SST checks Postgres itself
    sts = objs[("StatefulSet", names.postgres("demo"))]
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    assert dsn.endswith(f":{port['port']}/{render.PG_DB}")


def test_a_dsn_written_for_the_headless_service_moves_to_the_cluster_ip_one() -> None:
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    current = render.postgres_secret("demo", "ns", "0.1.0", "pw")["data"]
    assert render.updated_dsn("demo", "ns", current) is None
    old = {**current, "dsn": b64("postgresql://beco:pw@demo-postgres.ns.svc:5432/beco")}
    assert render.updated_dsn("demo", "ns", old) == current["dsn"]  # same password kept
    # anything this operator did not write that way is left alone
    for other in (
        {**current, "dsn": b64("postgresql://beco:pw@db.example:5432/beco")},
        {**old, "password": b64("another")},
        {"password": current["password"]},
        {**old, "dsn": "not base64!"},
    ):
        assert render.updated_dsn("demo", "ns", other) is None


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


def _workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]


@pytest.mark.parametrize("insecure", [False, True])
def test_probes_use_the_plaintext_health_port_whatever_the_transport(insecure: bool) -> None:
    """With mutual TLS on the main port a kubelet probe there can only fail (issue 8, item 1)."""
    objs = _render(transport={"insecure": insecure})
    beco = [w for w in _workloads(objs) if w["metadata"]["name"] != "demo-postgres"]
    assert len(beco) == 6
    for w in beco:
        (c,) = w["spec"]["template"]["spec"]["containers"]
        assert f"--health-listen=0.0.0.0:{names.HEALTH_PORT}" in c["args"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["health"] == names.HEALTH_PORT
        assert c["readinessProbe"]["grpc"] == {"port": names.HEALTH_PORT}
        liveness = {"port": names.HEALTH_PORT, "service": "liveness"}
        assert c["livenessProbe"]["grpc"] == liveness
        assert c["startupProbe"]["grpc"] == liveness
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"]["port"] != names.PORT, (w["metadata"]["name"], probe)


def test_every_statefulset_names_a_headless_service() -> None:
    objs = _by(_render(userNodes={"perZone": 2}))
    sts = [o for o in objs.values() if o["kind"] == "StatefulSet"]
    assert len(sts) == 6
    for s in sts:
        svc = objs.get(("Service", s["spec"]["serviceName"]))
        assert svc is not None, f"{s['metadata']['name']} names no rendered Service"
        assert svc["spec"].get("clusterIP") == "None", f"{svc['metadata']['name']} is not headless"
        assert svc["spec"]["selector"] == s["spec"]["selector"]["matchLabels"]


def test_postgres_does_not_change_with_the_node_image() -> None:
    """A node upgrade must not restart Postgres (issue 8, item 6): byte-identical objects."""

    def pg(tag: str) -> tuple[str, str]:
        objs = _by(_render(image={"tag": tag}))
        sts = objs[("StatefulSet", "demo-postgres")]
        return (
            json.dumps(sts["spec"]["template"], sort_keys=True),
            json.dumps(
                [sts, objs[("Service", "demo-postgres")], objs[("Service", "demo-database")]],
                sort_keys=True,
            ),
        )

    assert pg("0.1.0") == pg("0.2.0")
    sts = _by(_render())[("StatefulSet", "demo-postgres")]
    assert sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "15"


def test_postgres_runs_as_the_postgres_user_not_root() -> None:
    pod = _by(_render())[("StatefulSet", "demo-postgres")]["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (
        True,
        999,
        999,
        999,
    )
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"} <= mounts


def _allows(policy: Obj, port: int, peer: dict[str, str] | None) -> bool:
    """Whether ``policy`` admits TCP ``port`` from a pod labelled ``peer`` (None: the node)."""
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        sources = rule.get("from")
        if not sources:
            return True
        for src in sources:
            sel = src.get("podSelector", {}).get("matchLabels")
            if peer is not None and sel is not None and sel.items() <= peer.items():
                return True
    return False


def _policies_for(objs: list[Obj], pod_labels: dict[str, str]) -> list[Obj]:
    out = []
    for o in objs:
        if o["kind"] != "NetworkPolicy":
            continue
        sel = o["spec"]["podSelector"]
        if not sel.get("matchLabels", {}).items() <= pod_labels.items():
            continue
        if all(pod_labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])):
            out.append(o)
    return out


def test_network_policies_admit_the_kubelet_probes_and_the_members() -> None:
    objs = _render()
    member = _by(objs)[("StatefulSet", "demo-user-a")]["spec"]["template"]["metadata"]["labels"]
    sst = _by(objs)[("StatefulSet", "demo-sst")]["spec"]["template"]["metadata"]["labels"]
    stranger = {"app": "other"}
    for w in _workloads(objs):
        tmpl = w["spec"]["template"]
        policies = _policies_for(objs, tmpl["metadata"]["labels"])
        assert policies, f"{w['metadata']['name']} is selected by no NetworkPolicy"
        (c,) = tmpl["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c[probe].get("grpc", {}).get("port")
            if port is not None:  # network probes come from the node, not from a pod
                assert any(_allows(p, port, None) for p in policies), (w["metadata"], probe)
        if w["metadata"]["name"] == "demo-postgres":
            assert any(_allows(p, names.PG_PORT, sst) for p in policies)
            assert not any(_allows(p, names.PG_PORT, member) for p in policies)
            assert not any(_allows(p, names.PG_PORT, None) for p in policies)
        else:
            assert any(_allows(p, names.PORT, member) for p in policies), w["metadata"]["name"]
            assert any(_allows(p, names.PORT, sst) for p in policies), w["metadata"]["name"]
    for role in ("validator", "sst", "rendezvous"):
        tmpl = next(w for w in _workloads(objs) if w["metadata"]["name"] == f"demo-{role}")
        policies = _policies_for(objs, tmpl["spec"]["template"]["metadata"]["labels"])
        assert not any(_allows(p, names.PORT, stranger) for p in policies), role


def _lint(obj: Obj) -> list[str]:
    """The checks of kube-linter's and kube-score's defaults that apply to our workloads."""
    if obj["kind"] not in ("StatefulSet", "Deployment"):
        return []
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    pod = obj["spec"]["template"]["spec"]
    found = []
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        found.append(f"{where}: run-as-non-root")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: seccomp")
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{where}: service account token mounted")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        found.append(f"{where}: host namespaces")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: privilege-escalation-container")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: no-read-only-root-fs")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{where}: drop-all-capabilities")
        if sc.get("privileged"):
            found.append(f"{where}: privileged-container")
        res = c.get("resources", {})
        for kind in ("cpu", "memory"):
            if kind not in res.get("requests", {}):
                found.append(f"{where}: unset-{kind}-requirements")
        if "memory" not in res.get("limits", {}):
            found.append(f"{where}: unset-memory-limit")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                found.append(f"{where}: no-{probe}")
        image = c["image"]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            found.append(f"{where}: latest-tag")
        if c.get("ports") and any("hostPort" in p for p in c["ports"]):
            found.append(f"{where}: host-port")
    return found


@pytest.mark.parametrize(
    "overrides",
    [{}, {"userNodes": {"perZone": 2}}, {"database": {"external": {"secretRef": {"name": "pg"}}}}],
)
def test_rendered_workloads_pass_the_best_practice_checks(overrides: dict[str, Any]) -> None:
    problems = [p for o in _render(**overrides) for p in _lint(o)]
    assert not problems, problems


def test_what_the_log_needs_lives_as_long_as_the_log() -> None:
    owner = render.owner_reference("demo", "uid-1")
    retain = make_spec().database
    delete = make_spec(database={"managed": {"reclaimPolicy": "Delete"}}).database
    external = make_spec(database={"external": {"secretRef": {"name": "pg"}}}).database
    assert isinstance(retain, ManagedDatabase) and isinstance(delete, ManagedDatabase)
    assert render.log_owners(retain, owner) == []  # survives the network, as the PVC
    assert render.log_owners(delete, owner) == [owner]
    assert render.log_owners(external, owner) == []  # the operator never deletes that log


def test_only_the_sst_key_follows_the_log() -> None:
    """The SST's key signed the log's tree heads; every other key goes with the network."""
    slots = keyring.desired_slots("demo", "ns", make_spec())
    follow = [s.name for s in slots if keyring.follows_log(s)]
    assert follow == [names.singleton("demo", names.ROLE_SST)] == ["demo-sst"]


def test_a_service_that_must_become_headless_is_recreated() -> None:
    want = diff.with_hash(_by(_render())[("Service", "demo-validator")])
    had_ip: Obj = {**want, "spec": {**want["spec"], "clusterIP": "10.0.0.7"}}
    assert diff.must_recreate(want, had_ip)
    assert not diff.must_recreate(want, {**want, "spec": {**want["spec"]}})
    assert not diff.must_recreate(want, None)
    client = diff.with_hash(_by(_render())[("Service", "demo")])
    assert not diff.must_recreate(client, {**client, "spec": {**client["spec"], "clusterIP": "1"}})


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _perturbed(template: Obj, path: tuple[Any, ...]) -> Obj:
    out = json.loads(json.dumps(template))
    node = out
    for k in path[:-1]:
        node = node[k]
    old = node[path[-1]]
    node[path[-1]] = (not old) if isinstance(old, bool) else f"{old}-changed"
    return dict(out)


def _excluded(template: Obj, path: tuple[Any, ...]) -> bool:
    """The one part a restart need not follow: the key Secrets projected into the volume."""
    if path[:1] == ("metadata",) and path[1:3] == ("annotations", names.CONFIG_HASH_ANNOTATION):
        return True
    if path[:2] == ("spec", "volumes") and len(path) > 4:
        vol = template["spec"]["volumes"][path[2]]
        return bool(vol["name"] == "key" and path[3:5] == ("projected", "sources"))
    return False


@pytest.mark.parametrize("workload", ["demo-user-a", "demo-sst", "demo-rendezvous"])
def test_the_config_hash_covers_every_field_of_the_pod_template(workload: str) -> None:
    """A field added to the template restarts pods when it changes: nothing to remember."""
    objs = _by(_render(podTemplate={"labels": {"team": "x"}, "priorityClassName": "high"}))
    kind = "Deployment" if workload.endswith("rendezvous") else "StatefulSet"
    template = objs[(kind, workload)]["spec"]["template"]
    base = render.config_hash(template)
    assert template["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION] == base
    leaves = _leaves(template)
    assert len(leaves) > 40
    for path in leaves:
        changed = render.config_hash(_perturbed(template, path)) != base
        assert changed != _excluded(template, path), path


def test_scaling_up_changes_the_statefulset_but_not_the_config_hash() -> None:
    one = _by(_render())[("StatefulSet", "demo-user-a")]
    two = _by(
        render.render(
            "demo",
            "ns",
            "uid-1",
            make_spec(),
            singleton_key_hashes={},
            pod_monitor=True,
            user_replicas={"a": 2},
        )
    )[("StatefulSet", "demo-user-a")]
    assert two["spec"]["replicas"] == 2 and one["spec"]["replicas"] == 1
    ann = names.CONFIG_HASH_ANNOTATION
    assert (
        one["spec"]["template"]["metadata"]["annotations"][ann]
        == two["spec"]["template"]["metadata"]["annotations"][ann]
    )


def test_one_table_of_kinds_covers_every_rendered_child() -> None:
    from beco_operator import handlers, kinds, kube

    rendered = {o["kind"] for o in _render(userNodes={"perZone": 2})}
    assert rendered <= set(kinds.prunable(optional_served=True))
    assert "PodMonitor" not in kinds.prunable(optional_served=False)
    for k in rendered:
        assert kube.path(k, "ns", "x").endswith(f"/namespaces/ns/{kinds.BY_KIND[k].plural}/x")
    assert not [k for k in kinds.watched() if k.optional]
    # kopf watches exactly the table's watched kinds
    ids = {h.id for h in kopf_registry_handlers() if str(h.id).startswith("child-")}
    assert ids == {f"child-{k.plural}" for k in kinds.watched()}
    assert not hasattr(handlers, "STATE") and not hasattr(handlers, "NODE_IMAGE")


def kopf_registry_handlers() -> list[Any]:
    import kopf

    reg = kopf.get_default_registry()
    return list(reg._watching.get_all_handlers())


@pytest.mark.parametrize("insecure", [False, True])
def test_the_node_accepts_the_rendered_command_line(
    insecure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags the operator passes are the node's own (beco_node.settings parses them)."""
    from beco_node import settings

    for key in [k for k in os.environ if k.startswith("BECO_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BECO_DATABASE_URL", "postgresql://x@db/beco")  # the SST's, from a Secret
    for w in _workloads(_render(transport={"insecure": insecure})):
        if w["metadata"]["name"] == "demo-postgres":
            continue
        (c,) = w["spec"]["template"]["spec"]["containers"]
        argv = [a.replace("$(BECO_NODE_NAME)", "demo-user-a-0") for a in c["args"]]
        s = settings.parse(argv)
        assert s.health_listen == f"0.0.0.0:{names.HEALTH_PORT}"
        assert s.insecure is insecure
        assert not s.advertise  # the node registers its membership address
