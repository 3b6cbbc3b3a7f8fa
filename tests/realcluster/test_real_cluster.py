"""The real cluster (tests/cluster/real.py): real pods on every node, pod-to-pod across nodes,
DNS for a Service and traffic through it, a PVC bound by the default StorageClass, a
NetworkPolicy enforced, and ``stop()`` leaving nothing behind on the host.

Opt-in (marker ``realcluster``, env ``BECO_REAL_CLUSTER=1``; ``make e2e-k8s`` sets it): one
cluster for the module, stopped by the last test, which then inspects the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import images
from tests.cluster import netns as ns
from tests.cluster.fixtures import real_cluster_only, require_binaries
from tests.cluster.real import (
    KUBELET_HOST_PATHS,
    KUBELET_SYSCTLS,
    PREFIX,
    STORAGE_CLASS,
    RealCluster,
    cgroups_of,
    cluster_bin_dir,
    mounts_under,
    node_processes,
    reclaim_killed_cluster,
)

pytestmark = [pytest.mark.realcluster, pytest.mark.slow, real_cluster_only]

NS = "rc-test"
#: Default paths of containerd and CNI that our per-node settings must keep them away from.
OTHER_HOST_PATHS = (
    Path("/run/netns"),
    Path("/var/lib/containerd"),
    Path("/run/containerd/runc"),
    Path("/opt/containerd"),
)
SERVER = "import http.server, socket; http.server.HTTPServer(('', 8080), type('H', (http.server.BaseHTTPRequestHandler,), {'do_GET': lambda s: (s.send_response(200), s.end_headers(), s.wfile.write(socket.gethostname().encode()))})).serve_forever()"


def host_snapshot() -> dict[str, Any]:
    """What the cluster may touch on the host, to compare before/after."""
    return {
        "sysctls": {k: Path("/proc/sys", k.replace(".", "/")).read_text() for k in KUBELET_SYSCTLS},
        "paths": {str(p): p.exists() for p in (*KUBELET_HOST_PATHS, *OTHER_HOST_PATHS)},
        "run_netns_mounted": str(ns.NETNS_DIR) in Path("/proc/self/mountinfo").read_text(),
        "netns": sorted(p.name for p in ns.NETNS_DIR.glob(f"{PREFIX}-*"))
        if ns.NETNS_DIR.is_dir()
        else [],
        "kube_chains": _kube_chains(),
    }


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:300].decode(errors="replace")
    except OSError:
        return ""  # exited meanwhile


def _kube_chains() -> list[str]:
    out = []
    for tool in ("iptables-save", "iptables-legacy-save"):
        res = subprocess.run([tool], capture_output=True, text=True)
        out += [line for line in res.stdout.splitlines() if line.startswith(":KUBE")]
    return out


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RealCluster, dict[str, Any]]]:
    require_binaries()
    reclaim_killed_cluster()  # before the snapshot: its leftovers are not ours to keep
    before = host_snapshot()
    workdir = os.environ.get("BECO_E2E_WORKDIR")  # make e2e-k8s: one dir, images kept
    rc = RealCluster(Path(workdir) if workdir else tmp_path_factory.mktemp("real"))
    try:
        rc.start()
        rc.kubectl("create", "namespace", NS)
        yield rc, before
    finally:
        rc.stop()


def _pod(name: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "web",
                    "image": images.BASE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", SERVER],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }
            ],
            "terminationGracePeriodSeconds": 1,
        },
    }


def _apply(rc: RealCluster, *docs: dict[str, Any]) -> None:
    subprocess.run(
        [str(rc.bin_dir / "kubectl"), "apply", "-f", "-"],
        input="\n---\n".join(json.dumps(d) for d in docs),
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, **rc.env()},
    )


def _py(rc: RealCluster, pod: str, code: str, timeout: float = 60) -> str:
    return rc.kubectl("exec", "-n", NS, pod, "--", "python3", "-c", code, timeout=timeout).strip()


def _fetch(url: str, timeout: float = 3) -> str:
    return f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())"


def test_a_pod_runs_on_every_node(cluster: tuple[RealCluster, dict[str, Any]]) -> None:
    rc, _ = cluster
    nodes = rc.api("GET", "/api/v1/nodes")["items"]
    zones = {
        n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes
    }
    assert zones == {f"node-{z}": z for z in rc.zones}
    _apply(rc, *(_pod(f"web-{z}", f"node-{z}") for z in rc.zones))
    rc.kubectl(
        "wait", "-n", NS, "--for=condition=Ready", "pod", "--all", "--timeout=120s", timeout=150
    )
    for z in rc.zones:
        pod = rc.api("GET", f"/api/v1/namespaces/{NS}/pods/web-{z}")
        assert pod["spec"]["nodeName"] == f"node-{z}"
        assert pod["status"]["podIP"].startswith(f"10.244.{1 + rc.zones.index(z)}.")
        assert _py(rc, f"web-{z}", "import socket; print(socket.gethostname())") == f"web-{z}"


def test_pod_to_pod_across_nodes(cluster: tuple[RealCluster, dict[str, Any]]) -> None:
    rc, _ = cluster
    for src, dst in (("a", "b"), ("b", "c"), ("c", "a")):
        ip = rc.api("GET", f"/api/v1/namespaces/{NS}/pods/web-{dst}")["status"]["podIP"]
        assert _py(rc, f"web-{src}", _fetch(f"http://{ip}:8080/")) == f"web-{dst}"


def test_dns_resolves_a_service_and_routes_to_it(
    cluster: tuple[RealCluster, dict[str, Any]],
) -> None:
    rc, _ = cluster
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web-c"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(rc, svc)
    cluster_ip = rc.api("GET", f"/api/v1/namespaces/{NS}/services/web")["spec"]["clusterIP"]
    name = f"web.{NS}.svc.cluster.local"
    resolve = f"import socket; print(socket.gethostbyname({name!r}))"
    deadline = time.monotonic() + 60
    while True:  # the Service's endpoints and kube-proxy's rules take a moment on each node
        try:
            assert _py(rc, "web-a", resolve) == cluster_ip
            assert _py(rc, "web-a", _fetch("http://web/")) == "web-c"
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    # Names outside the cluster are never sent upstream (CoreDNS has no forward plugin).
    out = _py(
        rc,
        "web-b",
        "import socket\ntry:\n socket.gethostbyname('example.com')\nexcept OSError as e: print('unresolved')",
    )
    assert out == "unresolved"


def test_a_pvc_binds_on_the_default_storage_class(
    cluster: tuple[RealCluster, dict[str, Any]],
) -> None:
    rc, _ = cluster
    sc = rc.api("GET", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}},
    }
    pod = _pod("disk", "node-b")
    # Through the scheduler: WaitForFirstConsumer binds once it picked the node.
    del pod["spec"]["nodeName"]
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-b"}
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    _apply(rc, pvc, pod)
    rc.kubectl(
        "wait",
        "-n",
        NS,
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/data",
        "--timeout=120s",
        timeout=150,
    )
    rc.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/disk", "--timeout=120s", timeout=150)
    _py(rc, "disk", "open('/data/f', 'w').write('kept')")
    assert _py(rc, "disk", "print(open('/data/f').read())") == "kept"


def test_network_policy_is_enforced(cluster: tuple[RealCluster, dict[str, Any]]) -> None:
    rc, _ = cluster
    ip = rc.api("GET", f"/api/v1/namespaces/{NS}/pods/web-b")["status"]["podIP"]
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-c", "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web-b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web-c"}}}]}],
        },
    }
    _apply(rc, policy)
    probe = f"import socket\ntry:\n socket.create_connection(({ip!r}, 8080), timeout=2); print('open')\nexcept OSError: print('blocked')"
    deadline = time.monotonic() + 60
    while _py(rc, "web-a", probe) != "blocked":  # kube-router applies it within seconds
        assert time.monotonic() < deadline, "NetworkPolicy not enforced after 60 s"
        time.sleep(1)
    assert _py(rc, "web-c", _fetch(f"http://{ip}:8080/")) == "web-b"


def test_stop_leaves_nothing_behind(cluster: tuple[RealCluster, dict[str, Any]]) -> None:
    rc, before = cluster
    workdir = rc.workdir
    rc.stop()
    left = {p: _cmdline(p) for p in node_processes(workdir)}
    assert {p: c for p, c in left.items() if c} == {}
    assert mounts_under(workdir) == []
    assert [c for n in rc.nodes for c in cgroups_of(n.cgroup_name)] == []
    after = host_snapshot()
    assert after["netns"] == []
    assert after == before
    assert list(Path("/var/lib/cni/results").glob("beco-*")) == []  # (podman shares the dir)
    assert not (workdir / "state.json").exists()
    assert cluster_bin_dir().exists()
