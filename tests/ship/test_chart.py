"""The Helm chart, checked by helm itself and the Kubernetes OpenAPI schemas.

For the default values and for every non-default switch: `helm lint --strict`, `helm template`,
and each rendered object validated against Kubernetes 1.36's OpenAPI schema (kubernetes-validate)
or, for monitoring.coreos.com kinds, against the Prometheus Operator's CRD schema. The chart's
CRDs and RBAC must be identical to the operator's sources (crds/, deploy/rbac/).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, ROOT

KUBE_VERSION = "1.36.0"

# name -> --set arguments. Every boolean switch of values.yaml flipped at least once.
CASES: dict[str, list[str]] = {
    "default": [],
    "replicas-2": ["replicaCount=2"],
    "replicas-2-no-pdb": ["replicaCount=2", "podDisruptionBudget.enabled=false"],
    "monitoring": ["metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true"],
    "no-metrics": ["metrics.enabled=false", "metrics.serviceMonitor.enabled=true"],
    "no-dashboards": ["dashboards.enabled=false"],
    "dashboards-elsewhere": ["dashboards.namespace=monitoring", "dashboards.folder=Identity"],
    "no-rbac-existing-sa": [
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=beco-operator-existing",
    ],
    "everything": [
        "replicaCount=3",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "imagePullSecrets[0].name=regcred",
        "operator.verbose=true",
        "operator.watchNamespaces[0]=team-a",
        "operator.extraArgs[0]=--resync-seconds=30",
        "operator.extraEnv[0].name=FOO",
        "operator.extraEnv[0].value=bar",
        "serviceAccount.annotations.team=identity",
        "podAnnotations.a=b",
        "podLabels.c=d",
        "priorityClassName=system-cluster-critical",
        "nodeSelector.kubernetes\\.io/os=linux",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/arch",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=In",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=amd64",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=beco-operator",
        "metrics.service.type=NodePort",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "fullnameOverride=beco",
    ],
}


def _set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def render(helm: str, sets: list[str], namespace: str = "beco-system") -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            helm,
            "template",
            "beco",
            str(CHART),
            "--namespace",
            namespace,
            "--include-crds",
            "--kube-version",
            KUBE_VERSION,
            *_set_args(sets),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _crd_schemas(prom_crds: Path) -> dict[str, dict[str, Any]]:
    schemas = {}
    for f in prom_crds.glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        for v in crd["spec"]["versions"]:
            schemas[f"{crd['spec']['group']}/{v['name']}/{crd['spec']['names']['kind']}"] = v[
                "schema"
            ]["openAPIV3Schema"]
    return schemas


def validate(doc: dict[str, Any], prom_schemas: dict[str, dict[str, Any]]) -> None:
    key = f"{doc['apiVersion']}/{doc['kind']}"
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        assert key in prom_schemas, f"no schema for {key}"
        # no metaschema check: the CRD's patterns are Go regexps (e.g. a mid-pattern "(?i)")
        jsonschema.Draft4Validator(prom_schemas[key]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION.rsplit(".", 1)[0], strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_template_and_validate(case: str, helm: str, prom_crds: Path) -> None:
    sets = CASES[case]
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *_set_args(sets)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(helm, sets)
    schemas = _crd_schemas(prom_crds)
    kinds = [d["kind"] for d in docs]
    for d in docs:
        validate(d, schemas)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # hardening holds in every case
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"] and c["readinessProbe"]["httpGet"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    replicas = dep["spec"]["replicas"]
    leader = any(a == "--leader-elect" for a in c["args"])
    # always: an upgrade's surge pod or a replicaCount change must never reconcile beside
    # the old pod; so the rolling update needs a probe a standby passes
    assert leader, "leader election in every case"
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
    pdb_on = replicas > 1 and "podDisruptionBudget.enabled=false" not in sets
    assert ("PodDisruptionBudget" in kinds) == pdb_on
    assert ("ServiceMonitor" in kinds) == (
        "metrics.serviceMonitor.enabled=true" in sets and "metrics.enabled=false" not in sets
    )
    assert ("PrometheusRule" in kinds) == ("prometheusRule.enabled=true" in sets)
    assert ("ClusterRole" in kinds) == ("rbac.create=false" not in sets)
    assert ("ServiceAccount" in kinds) == ("serviceAccount.create=false" not in sets)
    sa = pod["serviceAccountName"]
    for b in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "beco-system"}]
    dashboards = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    if "dashboards.enabled=false" in sets:
        assert not dashboards
    else:
        assert len(dashboards) == 2
        for cm in dashboards:
            assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
            (body,) = cm["data"].values()
            assert json.loads(body)["panels"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["replicaCount=0"], "replicaCount"),
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        (["metrics.port=70000"], "port"),
        (["resourcez.requests.cpu=1"], "resourcez"),
        (["serviceAccount.create=false"], "serviceAccount.name is required"),
    ],
)
def test_bad_values_are_refused(helm: str, sets: list[str], message: str) -> None:
    out = subprocess.run(
        [helm, "template", "beco", str(CHART), "--kube-version", KUBE_VERSION, *_set_args(sets)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert message in out.stderr


def test_crds_are_the_operators() -> None:
    """One source of truth: the chart's crds/ is a generated copy of the repository's crds/."""
    src = sorted((ROOT / "crds").glob("*.yaml"))
    assert src, "crds/ holds no CRD"
    copies = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in src], "run make chart-sync"
    for s, c in zip(src, copies, strict=True):
        assert c.read_text() == s.read_text(), f"{c} is stale: run make chart-sync"


def test_rbac_is_the_operators(helm: str) -> None:
    """The chart's RBAC rules are exactly deploy/rbac/operator-rbac.yaml's, and least privilege."""
    src = ROOT / "deploy" / "rbac" / "operator-rbac.yaml"
    copy = CHART / "files" / "operator-rbac.yaml"
    assert copy.read_text() == src.read_text(), "files/operator-rbac.yaml is stale: make chart-sync"
    want = [
        d for d in yaml.safe_load_all(src.read_text()) if d and d["kind"] in ("ClusterRole", "Role")
    ]
    got = [d for d in render(helm, []) if d["kind"] in ("ClusterRole", "Role")]
    assert [(d["kind"], d["rules"]) for d in got] == [(d["kind"], d["rules"]) for d in want]
    for role in got:
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), f"wildcard {key} in {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_package_holds_the_chart_only(helm: str, tmp_path: Path) -> None:
    import tarfile

    out = subprocess.run(
        [helm, "package", str(CHART), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (tgz,) = tmp_path.glob("beco-operator-*.tgz")
    names = tarfile.open(tgz).getnames()
    assert "beco-operator/crds/beconetworks.beco.dev.yaml" in names
    assert "beco-operator/files/operator-rbac.yaml" in names
    assert not [n for n in names if "/hack/" in n or n.endswith(".py")]


def test_rendered_monitoring_is_the_checked_files(helm: str) -> None:
    """The PrometheusRule and dashboard ConfigMaps carry exactly the files promtool checks."""
    docs = render(helm, ["prometheusRule.enabled=true"])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    cms = {
        k: v
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
        for k, v in d["data"].items()
    }
    for f in (CHART / "dashboards").glob("*.json"):
        assert json.loads(cms[f.name]) == json.loads(f.read_text())
