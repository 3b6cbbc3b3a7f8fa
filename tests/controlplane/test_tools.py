"""The client tools built with the plane (kubectl, helm) work against it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster import ControlPlane
from tests.cluster.binaries import read_versions

pytestmark = pytest.mark.controlplane


def _run(cp: ControlPlane, *argv: str) -> str:
    env = {**os.environ, **cp.env(), "HOME": str(cp.workdir)}  # helm keeps its state under HOME
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def test_kubectl_is_ours_and_sees_the_zones(control_plane: ControlPlane) -> None:
    cp = control_plane
    version = json.loads(_run(cp, "kubectl", "version", "--output=json"))
    # Our build, not Debian's /usr/bin/kubectl (v1.32): cp.env() puts the bin dir first on PATH.
    expected = read_versions()["K8S_VERSION"]
    assert version["clientVersion"]["gitVersion"] == expected
    assert version["serverVersion"]["gitVersion"] == expected
    zones = _run(
        cp,
        "kubectl",
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].metadata.labels.topology\\.kubernetes\\.io/zone}",
    )
    assert sorted(zones.split()) == sorted(z for z in cp.zones for _ in range(cp.nodes_per_zone))


def test_helm_installs_and_uninstalls_a_chart(
    control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path
) -> None:
    cp, ns = control_plane, k8s_namespace
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    helm_version = read_versions()["HELM_VERSION"]
    assert f'Version:"{helm_version}"' in _run(cp, "helm", "version")
    _run(cp, "helm", "lint", str(chart))
    _run(cp, "helm", "install", "demo", str(chart), "-n", ns, "--wait", "--timeout", "60s")
    cm = cp.api("GET", f"/api/v1/namespaces/{ns}/configmaps/demo-cm")
    assert cm["data"] == {"greeting": "hello"}
    _run(cp, "helm", "uninstall", "demo", "-n", ns, "--wait")
    assert not cp.exists(f"/api/v1/namespaces/{ns}/configmaps/demo-cm")
