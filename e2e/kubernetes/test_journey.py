"""The user's journey on Kubernetes, with real pods: the chart installs the operator (running
as a pod from our image, under the chart's ServiceAccount), ``examples/network.yaml`` is
applied as written, the network becomes Ready with one user node per zone, the README's CLI
example runs from outside the cluster through a port-forward (mutual TLS, with the client
certificate the operator issues), and a user-node pod deleted under a steady write load comes
back serving the latest state while writes keep committing.

Opt-in (see conftest.py); ``make e2e-k8s`` runs it on the real cluster of tests/cluster/real.py.
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.fixtures import real_cluster_only

from .conftest import FIGURES, NETWORK, OPERATOR_NS, RELEASE, Target, port_forward

pytestmark = [pytest.mark.realcluster, pytest.mark.slow, real_cluster_only]

BECO = Path(sys.executable).parent / "beco"
PERMISSION_DENIED = 17  # beco's exit code for the gRPC status (README)


def test_operator_runs_as_a_pod_under_the_charts_service_account(operator: Target) -> None:
    pods = json.loads(
        operator.kubectl(
            "get",
            "pods",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=beco-operator",
            "-o",
            "json",
        )
    )["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    assert pod["spec"]["containers"][0]["image"] == operator.image
    sa = pod["spec"]["serviceAccountName"]
    assert sa.startswith(RELEASE) and sa != "default"


def test_example_network_becomes_ready_with_a_user_node_per_zone(demo: Target) -> None:
    pods = json.loads(demo.kubectl("get", "pods", "-o", "json"))["items"]
    nodes = {
        n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone")
        for n in json.loads(demo.kubectl("get", "nodes", "-o", "json"))["items"]
    }
    users = [p for p in pods if "user" in p["metadata"]["name"]]
    assert sorted(nodes[p["spec"]["nodeName"]] for p in users) == ["a", "b", "c"]
    # no container was restarted on the way: probes pass, the SST waited for Postgres
    restarts = {
        p["metadata"]["name"]: sum(c["restartCount"] for c in p["status"]["containerStatuses"])
        for p in pods
    }
    assert not any(restarts.values()), restarts


@dataclass
class Cli:
    """The ``beco`` CLI of this installation, pointed at a port-forward with the network's
    client credentials (Secret ``demo-client-tls``) and its membership (the SST key)."""

    dir: Path
    port: int
    latencies: list[float] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            "PATH": f"{BECO.parent}:/usr/bin:/bin",
            "BECO_ENDPOINT": f"127.0.0.1:{self.port}",
            "BECO_MEMBERSHIP": str(d / "membership.json"),
            "BECO_TLS_CA": str(d / "ca.crt"),
            "BECO_TLS_CERT": str(d / "tls.crt"),
            "BECO_TLS_KEY": str(d / "tls.key"),
            "BECO_TLS_SERVER_NAME": f"{NETWORK}.default.svc",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        res = subprocess.run(
            [str(BECO), *args],
            capture_output=True,
            text=True,
            cwd=self.dir,
            env=self.env(),
            timeout=120,
        )
        if res.returncode == 0 and (args[2:3] in (("set",), ("grant",)) or "create" in args):
            self.latencies.append(time.monotonic() - start)
        return res

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, f"beco {' '.join(args)}: exit {res.returncode}\n{res.stderr}"
        return res.stdout


def _credentials(k8s: Target, d: Path) -> None:
    cm = json.loads(k8s.kubectl("get", "configmap", f"{NETWORK}-membership", "-o", "json"))
    (d / "membership.json").write_text(cm["data"]["membership.json"])
    sec = json.loads(k8s.kubectl("get", "secret", f"{NETWORK}-client-tls", "-o", "json"))
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (d / key).write_bytes(base64.b64decode(sec["data"][key]))
        (d / key).chmod(0o600)


@contextmanager
def cli(k8s: Target, d: Path, target: str = f"service/{NETWORK}") -> Iterator[Cli]:
    d.mkdir(parents=True, exist_ok=True)
    _credentials(k8s, d)
    with port_forward(k8s, target, 9001) as port:
        yield Cli(d, port)


@pytest.fixture(scope="module")
def users(demo: Target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice and Bob's key files (the README's example creates them)."""
    d = tmp_path_factory.mktemp("users")
    for who in ("alice", "bob"):
        subprocess.run([str(BECO), "keygen", "--out", str(d / f"{who}.key")], check=True)
    return d


def test_readme_example_through_a_port_forward(demo: Target, users: Path) -> None:
    with cli(demo, users) as beco:
        alice, bob = (beco.ok("whoami", "--key", f"{w}.key").strip() for w in ("alice", "bob"))
        beco.ok("--key", "alice.key", "user", "create", "--first", "Alice", "--last", "Smith")
        beco.ok("--key", "bob.key", "user", "create", "--first", "Bob")
        refused = beco.run("--key", "bob.key", "set", "first", "--user", alice, "Mallory")
        assert refused.returncode == PERMISSION_DENIED, refused.stderr
        beco.ok("--key", "alice.key", "tree", "head", "--save", "head1.json")
        beco.ok("--key", "alice.key", "grant", "first", bob, "editor")
        beco.ok("--key", "bob.key", "set", "first", "--user", alice, "Alicia")
        got = json.loads(beco.ok("--output", "json", "--key", "alice.key", "user", "get"))
        assert "Alicia" in json.dumps(got), got
        # offline: verified against the SST key of the membership ConfigMap (BECO_MEMBERSHIP)
        beco.ok("--key", "alice.key", "proof", "inclusion")
        beco.ok("--key", "alice.key", "tree", "head", "--save", "head2.json")
        heads = [json.loads((users / f"head{i}.json").read_text()) for i in (1, 2)]
        assert int(heads[1]["tree_size"]) > int(heads[0]["tree_size"])
        beco.ok("--key", "alice.key", "proof", "consistency", "--old-head", "head1.json")
        # a forged old head is not a prefix of this log: refused, not verified
        forged = {**heads[0], "root_hash": base64.b64encode(b"\0" * 32).decode()}
        (users / "forged.json").write_text(json.dumps(forged))
        fork = beco.run("--key", "alice.key", "proof", "consistency", "--old-head", "forged.json")
        assert fork.returncode != 0, fork.stdout
    FIGURES["CLI commit through port-forward, median (s)"] = statistics.median(beco.latencies)


@dataclass
class Load:
    """Alice sets her first name to w0, w1, ... one write after the other until stopped."""

    beco: Cli
    acked: list[tuple[float, str]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            value = f"w{i}"
            res = self.beco.run("--key", "alice.key", "set", "first", value)
            now = time.monotonic()
            if res.returncode == 0:
                self.acked.append((now, value))
            else:
                self.failed.append((now, res.stderr.strip()[-300:]))
            i += 1


def _first_name(beco: Cli) -> str:
    res = beco.run("--output", "json", "--key", "alice.key", "user", "get")
    return res.stdout if res.returncode == 0 else ""


def test_a_deleted_user_node_returns_serving_the_latest_state_under_write_load(
    demo: Target, users: Path
) -> None:
    # the load goes through user-a; user-b is the pod deleted
    with cli(demo, users, "pod/demo-user-a-0") as beco:
        load = Load(beco)
        writer = threading.Thread(target=load.run, daemon=True)
        writer.start()
        try:
            _wait(lambda: len(load.acked) >= 3, 60, "the write load to commit")
            deleted = time.monotonic()
            demo.kubectl("delete", "pod", "demo-user-b-0", "--wait=true", timeout=120)
            demo.kubectl(
                "wait",
                "--for=condition=Ready",
                "pod/demo-user-b-0",
                "--timeout=120s",
                timeout=150,
            )
            ready = time.monotonic()
            _wait(lambda: any(t > ready for t, _ in load.acked), 60, "a write after the return")
        finally:
            load.stop.set()
            writer.join(150)
    during = [v for t, v in load.acked if deleted < t <= ready]
    assert during, "no write committed while the pod was away"
    assert not load.failed, load.failed
    latest = load.acked[-1][1]
    with cli(demo, users / "b", "pod/demo-user-b-0") as back:
        (users / "b" / "alice.key").write_bytes((users / "alice.key").read_bytes())
        _wait(lambda: f'"{latest}"' in _first_name(back), 60, f"user-b to serve {latest}")
    FIGURES["user-node pod deleted -> Ready (s)"] = ready - deleted
    FIGURES["writes committed while it was away"] = len(during)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
