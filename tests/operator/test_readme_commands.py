"""The README's operator commands, run exactly as written, on a cluster that never saw BECO.

Each ``kubectl`` line of the README's operator block runs verbatim through bash (so
``$(date +%s)`` expands as it would for a user) in the repository root, with a kubeconfig
whose context namespace is the test's own. The ``beco-operator`` line is the module's
operator process (the same console script, under the RBAC file's ServiceAccount).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.plane import ControlPlane

from .harness import ROOT, OperatorProcess, get_network, items, wait, wait_ready

pytestmark = pytest.mark.controlplane


def readme_operator_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The operator", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's operator section lost its command block"
    lines = [ln.split("  #", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln.startswith("kubectl ")]


def test_the_readme_names_the_commands_this_test_runs() -> None:
    assert (
        readme_operator_commands()[0] == "kubectl apply -f crds/ -f deploy/rbac/operator-rbac.yaml"
    )


def test_readme_operator_commands_run_verbatim(
    control_plane: ControlPlane,
    k8s_namespace: str,
    beco_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, k8s_namespace
    kubeconfig = yaml.safe_load(cp.kubeconfig.read_text())
    for ctx in kubeconfig["contexts"]:
        ctx["context"]["namespace"] = ns
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    # HOME: kubectl's discovery cache goes to the test's directory, not the user's
    env = {**os.environ, **cp.env(), "KUBECONFIG": str(tmp_path / "kubeconfig")}
    env["HOME"] = str(tmp_path)
    rbac = [d for d in yaml.safe_load_all((ROOT / "deploy/rbac/operator-rbac.yaml").read_text())]
    ns_doc = next(d for d in rbac if d["kind"] == "Namespace")
    system_ns = ns_doc["metadata"]["name"]
    existed = cp.exists(f"/api/v1/namespaces/{system_ns}")

    def run(cmd: str) -> str:
        out = subprocess.run(
            ["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, f"`{cmd}` failed:\n{out.stdout}{out.stderr}"
        return out.stdout

    try:
        for cmd in readme_operator_commands():
            out = run(cmd)
            if cmd.startswith("kubectl apply -f crds/"):
                assert cp.exists(f"/api/v1/namespaces/{system_ns}/serviceaccounts/beco-operator")
            elif cmd == "kubectl apply -f examples/network.yaml":
                wait_ready(cp, ns, "demo")
            elif cmd.startswith("kubectl get bnet demo"):
                header, row = (ln.split() for ln in out.splitlines()[:2])
                assert header == ["NAME", "ZONES", "MEMBERS", "QUORUM", "READY", "PHASE", "AGE"]
                assert row[:6] == ["demo", "a,b,c", "3", "2", "3/3", "Ready"], out
            elif cmd.startswith("kubectl scale bnet demo"):
                obj = wait_ready(cp, ns, "demo", timeout=180)
                assert (obj["status"]["members"], obj["status"]["quorum"]) == (6, 4)
            elif cmd.startswith("kubectl annotate bnet demo beco.dev/rotate-keys="):
                token = get_network(cp, ns, "demo")["metadata"]["annotations"][
                    "beco.dev/rotate-keys"
                ]
                assert token.isdigit()
                sel = "beco.dev/network=demo,beco.dev/key=node"

                def rotated_one(sel: str = sel, token: str = token) -> bool:
                    secs = items(cp, f"/api/v1/namespaces/{ns}/secrets", sel)
                    return any(
                        s["metadata"]["annotations"].get("beco.dev/rotation-token") == token
                        for s in secs
                    )

                wait(rotated_one, 60, "the operator to rotate a first key")
    finally:
        if not existed:
            subprocess.run(
                ["bash", "-c", "kubectl delete --wait=false -f deploy/rbac/operator-rbac.yaml"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=False,
            )
