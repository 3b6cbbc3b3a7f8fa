"""`kubectl beco status`, `connect` and `verify-log` on the live example network with real pods
(the journey's ``demo`` fixture: ``examples/network.yaml`` applied and Ready). They need running
containers (a port-forward to a real user node); the kwok control plane covers `status` and
`rotate-keys` (tests/operator/test_kubectl_plugin.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.fixtures import real_cluster_only

from .conftest import NETWORK, Target

pytestmark = [pytest.mark.realcluster, pytest.mark.slow, real_cluster_only]
BIN = Path(sys.executable).parent
Beco = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl_beco(demo: Target, tmp_path: Path) -> Beco:
    env = demo.env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # kubectl finds the plugin kubectl-beco

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd, rest = args[0], args[1:]
        argv = ["kubectl", "beco", cmd, NETWORK, "-n", "default", *rest]
        return subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    return run


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_status_reads_the_signed_tree_head(kubectl_beco: Beco) -> None:
    data = json.loads(ok(kubectl_beco("status", "-o", "json")))
    assert data["phase"] == "Ready" and data["margin"] >= 0
    head = data["treeHead"]
    assert head["reachable"] is True, head
    assert head["ageSeconds"] is not None and head["ageSeconds"] >= 0


def test_connect_and_verify_log_detects_a_fork(kubectl_beco: Beco, tmp_path: Path) -> None:
    subprocess.run([str(BIN / "beco"), "keygen", "--out", str(tmp_path / "alice.key")], check=True)
    beco = ("connect", "--", "--key", "alice.key")
    ok(kubectl_beco(*beco, "user", "create", "--first", "Alice"))
    ok(kubectl_beco(*beco, "tree", "head", "--save", "h1.json"))
    # the proof verifies against the SST key of the membership ConfigMap: no local copy needed
    ok(kubectl_beco(*beco, "proof", "inclusion"))
    ok(kubectl_beco(*beco, "set", "first", "Alicia"))

    out = kubectl_beco("verify-log", "--old-head", "h1.json", "--save", "h2.json")
    assert "extends the saved head" in ok(out)
    assert json.loads((tmp_path / "h2.json").read_text())["tree_size"]

    # a head whose root was rewritten: not signed by the SST, not a prefix: a fork (exit 5)
    forged = json.loads((tmp_path / "h1.json").read_text())
    forged["root_hash"] = base64.b64encode(b"\x00" * 32).decode()
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    fork = kubectl_beco("verify-log", "--old-head", "forged.json")
    assert fork.returncode == 5, fork.stderr
    assert "FORK" in fork.stderr

    # a saved head larger than the log: the log was rolled back (exit 5)
    ahead = json.loads((tmp_path / "h2.json").read_text())
    ahead["tree_size"] = str(int(ahead["tree_size"]) + 1000)
    (tmp_path / "ahead.json").write_text(json.dumps(ahead))
    rolled = kubectl_beco("verify-log", "--old-head", "ahead.json")
    assert rolled.returncode == 5 and "rolled back" in rolled.stderr

    # the network's own refusal passes through connect with beco's exit code
    denied = kubectl_beco("connect", "--", "--key", "alice.key", "user", "get", "nobody")
    assert denied.returncode >= 10, denied.stderr
