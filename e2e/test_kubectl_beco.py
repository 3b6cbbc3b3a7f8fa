"""`kubectl beco connect` and `verify-log` on a live network with real pods.

They need running containers (a port-forward to a real user node), so they run against a real
cluster only: set ``BECO_E2E_KUBECONFIG`` (the e2e suite's cluster, see e2e/kubernetes) and
``BECO_E2E_NETWORK=<namespace>/<name>`` of a Ready BecoNetwork; skipped otherwise. The kwok
control plane covers `status` and `rotate-keys` (tests/operator/test_kubectl_plugin.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KUBECONFIG = os.environ.get("BECO_E2E_KUBECONFIG", "")
NETWORK = os.environ.get("BECO_E2E_NETWORK", "")
pytestmark = [
    pytest.mark.skipif(
        not (KUBECONFIG and "/" in NETWORK),
        reason="needs a real cluster: BECO_E2E_KUBECONFIG and BECO_E2E_NETWORK=<ns>/<name>",
    ),
    pytest.mark.timeout(300),
]
BIN = Path(sys.executable).parent


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": KUBECONFIG,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    return subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def kubectl_beco(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    ns, name = NETWORK.split("/", 1)
    cmd, rest = args[0], args[1:]
    return run("kubectl", "beco", cmd, name, "-n", ns, *rest, cwd=cwd)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_status_reads_the_signed_tree_head(tmp_path: Path) -> None:
    data = json.loads(ok(kubectl_beco("status", "-o", "json", cwd=tmp_path)))
    assert data["phase"] == "Ready" and data["margin"] >= 0
    head = data["treeHead"]
    assert head["reachable"] is True, head
    assert head["ageSeconds"] is not None and head["ageSeconds"] >= 0


def test_connect_and_verify_log_detects_a_fork(tmp_path: Path) -> None:
    ok(run("beco", "keygen", "--out", "alice.key", cwd=tmp_path))
    beco = ("connect", "--", "--key", "alice.key")
    ok(kubectl_beco(*beco, "user", "create", "--first", "Alice", cwd=tmp_path))
    ok(kubectl_beco(*beco, "tree", "head", "--save", "h1.json", cwd=tmp_path))
    # the proof verifies against the SST key of the membership ConfigMap: no local copy needed
    ok(kubectl_beco(*beco, "proof", "inclusion", cwd=tmp_path))
    ok(kubectl_beco(*beco, "set", "first", "Alicia", cwd=tmp_path))

    out = kubectl_beco("verify-log", "--old-head", "h1.json", "--save", "h2.json", cwd=tmp_path)
    assert "extends the saved head" in ok(out)
    assert json.loads((tmp_path / "h2.json").read_text())["tree_size"]

    # a head whose root was rewritten: not signed by the SST, not a prefix: a fork (exit 5)
    forged = json.loads((tmp_path / "h1.json").read_text())
    forged["root_hash"] = base64.b64encode(b"\x00" * 32).decode()
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    fork = kubectl_beco("verify-log", "--old-head", "forged.json", cwd=tmp_path)
    assert fork.returncode == 5, fork.stderr
    assert "FORK" in fork.stderr

    # a saved head larger than the log: the log was rolled back (exit 5)
    ahead = json.loads((tmp_path / "h2.json").read_text())
    ahead["tree_size"] = str(int(ahead["tree_size"]) + 1000)
    (tmp_path / "ahead.json").write_text(json.dumps(ahead))
    rolled = kubectl_beco("verify-log", "--old-head", "ahead.json", cwd=tmp_path)
    assert rolled.returncode == 5 and "rolled back" in rolled.stderr

    # the network's own refusal passes through connect with beco's exit code
    denied = kubectl_beco(
        "connect", "--", "--key", "alice.key", "user", "get", "nobody", cwd=tmp_path
    )
    assert denied.returncode >= 10, denied.stderr
