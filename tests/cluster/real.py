"""A real Kubernetes cluster on this machine: the control plane of ``plane.py`` plus real nodes
(kubelet + containerd + runc, kube-proxy, kube-router for NetworkPolicy), one per zone, each in
its own network namespace - kind's layout without containers (see docs/testing.md).

Network (every address lives in a namespace this module creates; the host's namespace gets no
address, no route and no listening socket except the API forwarder on 127.0.0.1)::

    netns beco-rc-cp     bridge br0 10.250.0.1/24: etcd, kube-apiserver (6443), kcm, scheduler
      |-- veth -- netns beco-rc-<zone>: eth0 10.250.0.1N, pods 10.244.N.0/24 on cni0
    host: 127.0.0.1:<port> -> forward.py -> 10.250.0.1:6443 (kubeconfig, kubectl, tests)

One real cluster per machine: the kubelet hard-codes host paths (``/var/log/containers``,
``/var/lib/kubelet/device-plugins``) and sets host sysctls, which ``stop()`` restores.

Teardown works from ``state.json`` alone (``stop_detached``), and also cleans up after an
``up`` that failed half-way: each step records what it created before creating it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import images
from . import netns as ns
from .binaries import REPO_ROOT, cache_dir
from .pki import CertificateAuthority
from .plane import POD_CIDR, ZONE_LABEL, ControlPlane, ControlPlaneError
from .process import Process, forget, kill_group, pid_alive, stop_pids
from .rest import ApiError

PREFIX = "beco-rc"
CP_NETNS = f"{PREFIX}-cp"
FABRIC_PREFIX = "10.250.0"
CP_IP = f"{FABRIC_PREFIX}.1"
DNS_IP = "10.96.0.10"
STORAGE_CLASS = "local-path"
REGION = "beco-test"
CLUSTER_VERSIONS = REPO_ROOT / "tools" / "cluster" / "versions.env"
#: Host paths the kubelet uses whatever its --root-dir says.
KUBELET_HOST_PATHS = (Path("/var/log/containers"), Path("/var/lib/kubelet"))
#: Fixed paths of containerd 1.6 (shim sockets in /run/containerd/s) and libcni (its cache).
RUNTIME_HOST_PATHS = (Path("/run/containerd"), Path("/var/lib/cni"))
CNI_NETWORK = "beco"
#: Host sysctls the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables).
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
OWNER_FILE = Path("/run/beco-real-cluster.owner")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class ClusterError(ControlPlaneError):
    """The real cluster failed to start (the message names the component and its log)."""


def cluster_bin_dir() -> Path:
    """Where tools/cluster/build.sh puts CoreDNS, kube-router, crictl, local-path-provisioner."""
    env = os.environ.get("BECO_CLUSTER_BIN")
    if env:
        return Path(env).absolute()
    v = _read_env(CLUSTER_VERSIONS)
    key = "-".join(
        v[k]
        for k in ("COREDNS_VERSION", "KUBE_ROUTER_VERSION", "CRICTL_VERSION", "LOCAL_PATH_VERSION")
    )
    return cache_dir() / "cluster" / key / "bin"


def _read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name, zone, index (addresses) and directory."""

    name: str
    zone: str
    index: int
    dir: Path

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.zone}"

    @property
    def ip(self) -> str:
        return f"{FABRIC_PREFIX}.{11 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{1 + self.index}.0/24"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def cgroup_name(self) -> str:
        return f"beco-{self.name}"


class RealCluster:
    """``RealCluster(workdir).start()`` ... ``.stop()`` (or ``with``). See the module doc."""

    def __init__(
        self,
        workdir: Path,
        zones: Sequence[str] = ("a", "b", "c"),
        *,
        bin_dir: Path | None = None,
        cluster_bin: Path | None = None,
        extra_images: Sequence[str] = (),
        start_timeout: float = 240.0,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.zones = tuple(zones)
        self.extra_images = tuple(extra_images)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.cluster_bin = (cluster_bin or cluster_bin_dir()).absolute()
        self.plane = ControlPlane(
            self.workdir / "control-plane",
            self.zones,
            0,
            bin_dir=bin_dir,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
            netns=CP_NETNS,
            advertise_ip=CP_IP,
            kwok=False,
        )
        self.nodes = [
            NodeSpec(f"node-{z}", z, i, self.workdir / "nodes" / f"node-{z}")
            for i, z in enumerate(self.zones)
        ]
        self.processes: list[Process] = []
        self.timings: dict[str, float] = {}
        self._state: dict[str, Any] = {}
        self._lock = threading.Lock()  # nodes start in parallel threads
        self._detail = ""

    # ---- public ------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def bin_dir(self) -> Path:
        return self.plane.bin_dir

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def load_images(self, refs: Sequence[str]) -> None:
        """Import more local images (``podman`` refs) into every node's containerd, as
        :meth:`start` does for ``extra_images``: e.g. a second tag for an upgrade. A ref
        whose image a node already holds under another name is only tagged there."""
        ctr = shutil.which("ctr") or "ctr"

        def load(node: NodeSpec) -> None:
            marker = node.dir / "containerd" / "imported.json"
            held = {v: k for k, v in json.loads(marker.read_text()).items()}
            todo = []
            for ref in refs:
                iid = images.image_id(ref)
                if iid is not None and iid in held:
                    images.tag_in(ctr, node.socket, held[iid], ref, marker, iid)
                else:
                    todo.append(images.archive(ref))
            images.import_into(ctr, node.socket, todo, marker)

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(load, self.nodes))

    def env(self) -> dict[str, str]:
        env = self.plane.env()
        env["PATH"] = f"{self.cluster_bin}{os.pathsep}{env['PATH']}"
        return env

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.plane.api(method, path, body, **kw)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        res = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env()},
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes] + self.plane.pids()

    def start(self) -> None:
        if self.processes:
            raise RuntimeError("cluster already started")
        _claim_owner(self.workdir)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["up"] = time.monotonic() - t0

    def stop(self) -> None:
        """Stop everything and undo every side effect recorded in the state. Idempotent."""
        t0 = time.monotonic()
        procs = {p.pid: p for p in self.processes}
        forget(list(procs))
        self.processes = []
        state = self._state or _load_state(self.workdir)
        if state:
            teardown(state)
        with contextlib.suppress(ControlPlaneError):
            self.plane.stop()
        for p in procs.values():  # reap our children (teardown already killed them)
            p.stop(grace=0.1)
        _finish_teardown(self.workdir, state)
        self._state = {}
        self.timings["down"] = time.monotonic() - t0

    def detach(self) -> Path:
        """Leave the cluster running after this interpreter exits (see ``stop_detached``)."""
        if self.die_with_parent:
            raise RuntimeError("a detached cluster needs RealCluster(..., die_with_parent=False)")
        self.plane.detach()
        self._save()
        forget(self.pids())
        self.processes = []
        return self.workdir / "state.json"

    @staticmethod
    def stop_detached(workdir: Path) -> bool:
        """Tear down a cluster started by another process; False if none was up there."""
        workdir = Path(workdir).absolute()
        state = _load_state(workdir)
        if not state:
            return False
        teardown(state)
        with contextlib.suppress(ControlPlaneError):
            ControlPlane.stop_detached(workdir / "control-plane")
        _finish_teardown(workdir, state)
        return True

    def __enter__(self) -> RealCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- start -------------------------------------------------------------------------------

    def _start(self) -> None:
        for name in ("crictl", "coredns", "kube-router", "local-path-provisioner"):
            if not os.access(self.cluster_bin / name, os.X_OK):
                raise ClusterError(
                    f"{name} missing in {self.cluster_bin} (build it with `make cluster-tools`)"
                )
        for name in ("kubelet", "kube-proxy"):
            if not os.access(self.bin_dir / name, os.X_OK):
                raise ClusterError(f"{name} missing in {self.bin_dir} (run `make controlplane`)")
        t = time.monotonic()
        archives = self._images()
        self.timings["images"] = time.monotonic() - t
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state = {
            "workdir": str(self.workdir),
            "netns": [],
            "nodes": [],
            "pids": [],
            "sysctls": {k: _sysctl_get(k) for k in KUBELET_SYSCTLS},
            "host_paths": {str(p): p.exists() for p in KUBELET_HOST_PATHS + RUNTIME_HOST_PATHS},
            "run_netns_mounted": _is_mountpoint(ns.NETNS_DIR),
            "run_netns_existed": ns.NETNS_DIR.exists(),
        }
        self._save()
        t = time.monotonic()
        self._network()
        self.timings["network"] = time.monotonic() - t
        t = time.monotonic()
        self.plane.start()
        self._state["pids"] += self.plane.pids()
        self._save()
        self.timings["control_plane"] = time.monotonic() - t
        ca = CertificateAuthority.load(self.plane.workdir / "pki")
        t = time.monotonic()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self._start_runtime(n, archives), self.nodes))
        self.timings["runtimes_and_images"] = time.monotonic() - t
        self._bootstrap_rbac()
        for node in self.nodes:
            self._start_node(node, ca)
        t = time.monotonic()
        self._wait(self._nodes_ready, "nodes Ready")
        self.timings["nodes_ready"] = time.monotonic() - t
        for node in self.nodes:
            self._start_router(node)
        t = time.monotonic()
        self._addons()
        self._wait(self._addons_ready, "CoreDNS and the storage provisioner Ready")
        self.timings["addons_ready"] = time.monotonic() - t
        self._save()

    def _images(self) -> list[images.Archive]:
        bins = self.cluster_bin
        v = _read_env(CLUSTER_VERSIONS)
        refs = [
            images.build_pause(),
            images.build_binary_image(
                "coredns", v["COREDNS_VERSION"], bins / "coredns", ["/usr/bin/coredns"]
            ),
            images.build_binary_image(
                "local-path-provisioner",
                v["LOCAL_PATH_VERSION"],
                bins / "local-path-provisioner",
                ["/usr/bin/local-path-provisioner"],
            ),
            images.build_postgres(),
            images.BASE_IMAGE,
            *self.extra_images,
        ]
        return [images.archive(r) for r in refs]

    def _network(self) -> None:
        st = self._state
        st["netns"].append(CP_NETNS)
        self._save()
        ns.add(CP_NETNS)
        ns.ip(CP_NETNS, "link", "set", "lo", "up")
        ns.ip(CP_NETNS, "link", "add", "br0", "type", "bridge")
        ns.ip(CP_NETNS, "addr", "add", f"{CP_IP}/24", "dev", "br0")
        ns.ip(CP_NETNS, "link", "set", "br0", "up")
        for node in self.nodes:
            st["netns"].append(node.netns)
            self._save()
            ns.add(node.netns)
            peer = f"v-{node.zone}"[:15]
            ns.ip(
                CP_NETNS, "link", "add", peer, "type", "veth", "peer", "eth0", "netns", node.netns
            )
            ns.ip(CP_NETNS, "link", "set", peer, "master", "br0", "up")
            ns.ip(node.netns, "link", "set", "lo", "up")
            ns.ip(node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            ns.ip(node.netns, "link", "set", "eth0", "up")
            # Services' virtual IPs are DNATed by kube-proxy; the route only makes them routable.
            ns.ip(node.netns, "route", "add", "10.96.0.0/16", "via", CP_IP)
            ns.sysctl(node.netns, "net.ipv4.ip_forward", "1")
            ns.sysctl(node.netns, "net.bridge.bridge-nf-call-iptables", "1")
            ns.ip(CP_NETNS, "route", "add", node.pod_cidr, "via", node.ip)
            for other in self.nodes:
                if other is not node:
                    ns.ip(node.netns, "route", "add", other.pod_cidr, "via", other.ip)

    def _start_runtime(self, node: NodeSpec, archives: Sequence[images.Archive]) -> None:
        """containerd of one node (state fresh, image store kept), then its images."""
        d = node.dir
        self._record("nodes", {"name": node.name, "dir": str(d), "cgroup": node.cgroup_name})
        for sub in ("containerd/state", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "logs"):
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir(parents=True)
        (d / "local-path").mkdir(exist_ok=True)
        (d / "containerd.toml").write_text(_containerd_config(node))
        (d / "cni/net.d/10-beco.conflist").write_text(json.dumps(_cni_config(node), indent=2))
        _make_cgroups(node.cgroup_name)
        # Any pull fails at once instead of hanging: every image is imported locally.
        env = {
            **os.environ,
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
        }
        env.pop("NO_PROXY", None)
        proc = self._spawn(
            node, "containerd", ["containerd", "--config", str(d / "containerd.toml")], env
        )
        self._wait(lambda: node.socket.exists(), f"{node.name} containerd socket", proc)
        images.import_into(
            shutil.which("ctr") or "ctr", node.socket, archives, d / "containerd" / "imported.json"
        )

    def _start_node(self, node: NodeSpec, ca: CertificateAuthority) -> None:
        d = node.dir
        pki = d / "pki"
        ca_file = self.plane.ca_file
        server = ca.issue_in(
            pki, "kubelet-serving", node.name, server=True, dns=(node.name,), ips=(node.ip,)
        )
        kubelet_cert = ca.issue_in(pki, "kubelet", f"system:node:{node.name}", ("system:nodes",))
        proxy_cert = ca.issue_in(pki, "kube-proxy", "system:kube-proxy")
        router_cert = ca.issue_in(pki, "kube-router", "system:kube-router")
        url = self.plane.internal_api_url
        kc = self.plane._kubeconfig
        kubelet_cfg = kc(d / "kubelet.kubeconfig", node.name, kubelet_cert, url)
        proxy_cfg = kc(d / "kube-proxy.kubeconfig", "kube-proxy", proxy_cert, url)
        kc(d / "kube-router.kubeconfig", "kube-router", router_cert, url)
        (d / "kubelet.yaml").write_text(
            yaml.safe_dump(_kubelet_config(node, ca_file, server.cert, server.key))
        )
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(_proxy_config(node, proxy_cfg)))
        labels = f"{ZONE_LABEL}={node.zone},topology.kubernetes.io/region={REGION}"
        b = self.bin_dir
        self._spawn(
            node,
            "kubelet",
            [
                str(b / "kubelet"),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={kubelet_cfg}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                f"--node-ip={node.ip}",
                f"--hostname-override={node.name}",
                f"--node-labels={labels}",
                "--v=1",
            ],
        )
        self._spawn(
            node, "kube-proxy", [str(b / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}"]
        )

    def _start_router(self, node: NodeSpec) -> None:
        """kube-router finds its node by name: started once the kubelet registered it."""
        router_cfg = node.dir / "kube-router.kubeconfig"
        self._spawn(
            node,
            "kube-router",
            [
                str(self.cluster_bin / "kube-router"),
                f"--kubeconfig={router_cfg}",
                f"--hostname-override={node.name}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-ipv6=false",
                "--metrics-port=0",
                "--health-port=20244",
                "--v=1",
            ],
        )

    def _spawn(
        self, node: NodeSpec, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Process:
        proc = Process(
            f"{node.name}/{name}",
            ns.prefix(node.netns) + argv,
            node.dir / "logs" / f"{name}.log",
            die_with_parent=self.die_with_parent,
            env=env,
        )
        proc.start()
        self.processes.append(proc)
        self._record("pids", proc.pid)
        return proc

    def _wait(self, check: Any, what: str, proc: Process | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        self._detail = ""
        while True:
            for p in [proc] if proc else self.processes:
                code = p.poll()
                if code is not None:
                    raise ClusterError(f"{p.name} exited with {code}; log {p.log}:\n{p.log_tail()}")
            if check():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}: {self._detail}")
            time.sleep(0.5)

    def _nodes_ready(self) -> bool:
        try:
            items = self.api("GET", "/api/v1/nodes")["items"]
        except (ApiError, OSError) as exc:
            self._detail = str(exc)
            return False
        ready = {
            n["metadata"]["name"]
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions") or []
            )
            and not any(
                t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints") or []
            )
        }
        missing = [n for n in self.node_names if n not in ready]
        self._detail = f"not Ready: {missing}"
        return not missing

    def _bootstrap_rbac(self) -> None:
        rest = self.plane.rest
        rest.create(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "beco:kube-router"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["namespaces", "pods", "nodes", "services", "endpoints"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": ["networking.k8s.io"],
                        "resources": ["networkpolicies"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["get", "list", "watch"],
                    },
                ],
            },
        )
        rest.create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "beco:kube-router"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "beco:kube-router",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "system:kube-router",
                    }
                ],
            },
        )

    def _addons(self) -> None:
        v = _read_env(CLUSTER_VERSIONS)
        docs = _coredns_manifests(f"localhost/coredns:{v['COREDNS_VERSION']}")
        docs += _local_path_manifests(
            self.cluster_bin.parent / "local-path-storage.yaml",
            f"localhost/local-path-provisioner:{v['LOCAL_PATH_VERSION']}",
            self.nodes,
        )
        path = self.workdir / "addons.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.kubectl("apply", "-f", str(path))

    def _addons_ready(self) -> bool:
        for ns_, name in (
            ("kube-system", "coredns"),
            ("local-path-storage", "local-path-provisioner"),
        ):
            try:
                dep = self.api("GET", f"/apis/apps/v1/namespaces/{ns_}/deployments/{name}")
            except (ApiError, OSError) as exc:
                self._detail = str(exc)
                return False
            want = dep["spec"].get("replicas", 1)
            if dep.get("status", {}).get("readyReplicas", 0) < want:
                self._detail = f"deployment {ns_}/{name} not ready"
                return False
        return True

    def _save(self) -> None:
        with self._lock:
            self._save_locked()

    def _record(self, key: str, value: Any) -> None:
        """Append to a list in the state and save it (before the thing is created/used)."""
        with self._lock:
            self._state[key].append(value)
            self._save_locked()

    def _save_locked(self) -> None:
        if self._state:
            path = self.workdir / "state.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._state, indent=2))
            tmp.rename(path)


# ---- teardown (from state alone) ---------------------------------------------------------------


def _load_state(workdir: Path) -> dict[str, Any]:
    path = workdir / "state.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def teardown(state: dict[str, Any]) -> None:
    """Undo what ``state`` records: node by node as the kubelet would not on its own (kubelet,
    pod sandboxes, containerd, leftover shims, mounts, cgroups), then namespaces, host paths
    and sysctls. Every step tolerates what is already gone."""
    nodes = state.get("nodes", [])
    node_pids = set(state.get("pids", []))

    def stop_node(node: dict[str, Any]) -> None:
        d = Path(node["dir"])
        mine = [p for p in node_pids if _proc_in(p, d)]
        kubelets = [p for p in mine if _comm(p) == "kubelet"]
        others = [p for p in mine if p not in kubelets and _comm(p) != "containerd"]
        stop_pids(kubelets + others)
        sock = d / "containerd.sock"
        crictl = shutil.which("crictl") or str(cluster_bin_dir() / "crictl")
        if sock.exists() and os.access(crictl, os.X_OK):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [
                        crictl,
                        "--runtime-endpoint",
                        f"unix://{sock}",
                        "--timeout",
                        "20s",
                        "rmp",
                        "-fa",
                    ],
                    capture_output=True,
                    timeout=60,
                )
        stop_pids([p for p in mine if _comm(p) == "containerd"])
        # Shims outlive containerd (they are daemons of their own); find them by address.
        shims = _pids_with_arg(str(sock))
        for pid in shims:
            kill_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_cgroup(node["cgroup"])
        _unmount_under(d)
        _remove_cgroups(node["cgroup"])

    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        list(pool.map(stop_node, nodes))
    stop_pids([p for p in node_pids if pid_alive(p)])
    for name in state.get("netns", []):
        _kill_in_netns(name)  # anything a component forked into its namespace
        ns.delete(name)


def _finish_teardown(workdir: Path, state: dict[str, Any]) -> None:
    """After the control plane is gone: host paths, sysctls, /run/netns, state and owner."""
    with contextlib.suppress(OSError):
        if OWNER_FILE.read_text().strip() == str(workdir):
            OWNER_FILE.unlink()
    if not state:
        return
    nodes = [Path(n["dir"]) for n in state.get("nodes", [])]
    logs = Path("/var/log/containers")
    existed = state.get("host_paths", {})
    if logs.is_dir():
        for link in logs.iterdir():
            with contextlib.suppress(OSError):
                target = Path(os.readlink(link))
                if any(_is_under(target, d) for d in nodes):
                    link.unlink()
        if not existed.get(str(logs), True):
            with contextlib.suppress(OSError):
                logs.rmdir()
    kubelet_dir = Path("/var/lib/kubelet")
    if kubelet_dir.exists() and not existed.get(str(kubelet_dir), True):
        shutil.rmtree(kubelet_dir, ignore_errors=True)
    elif kubelet_dir.exists():
        with contextlib.suppress(OSError):
            (kubelet_dir / "device-plugins" / "kubelet.sock").unlink()
    for f in Path("/var/lib/cni/results").glob(f"{CNI_NETWORK}-*"):
        f.unlink(missing_ok=True)
    for path in RUNTIME_HOST_PATHS:
        if not existed.get(str(path), True):
            _prune_empty_dirs(path)
    for key, value in state.get("sysctls", {}).items():
        if value is not None and _sysctl_get(key) != value:
            with contextlib.suppress(OSError):
                Path("/proc/sys", key.replace(".", "/")).write_text(value)
    # `ip netns add` bind-mounts /run/netns onto itself (and creates it): undo when unused.
    if ns.NETNS_DIR.is_dir() and not any(ns.NETNS_DIR.iterdir()):
        if not state.get("run_netns_mounted", True) and _is_mountpoint(ns.NETNS_DIR):
            subprocess.run(["umount", str(ns.NETNS_DIR)], capture_output=True)
        if not state.get("run_netns_existed", True):
            with contextlib.suppress(OSError):
                ns.NETNS_DIR.rmdir()
    (workdir / "state.json").unlink(missing_ok=True)


def _prune_empty_dirs(top: Path) -> None:
    """Remove ``top`` and directories under it that are empty (bottom-up); keep any file."""
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def reclaim_killed_cluster(
    owner_file: Path = OWNER_FILE,
    stop: Callable[[Path], bool] = RealCluster.stop_detached,
) -> Path | None:
    """Tear down the machine's real cluster if the run that owned it was killed (its state is
    left, none of its recorded processes alive), as ``real-down`` would; return its workdir.
    A cluster that still runs is left alone."""
    try:
        owner = Path(owner_file.read_text().strip())
    except FileNotFoundError:
        return None
    state = _load_state(owner)
    if not state or _state_alive(owner, state):
        return None
    print(f"tearing down the real cluster a killed run left in {owner}", flush=True)
    stop(owner)
    return owner


def _claim_owner(
    workdir: Path,
    owner_file: Path = OWNER_FILE,
    stop_stale: Callable[[Path], bool] = RealCluster.stop_detached,
) -> None:
    """Make ``workdir`` the machine's one real cluster; another one that still runs refuses."""
    reclaim_killed_cluster(owner_file, stop_stale)
    with contextlib.suppress(FileNotFoundError):
        owner = Path(owner_file.read_text().strip())
        if owner != workdir and (owner / "state.json").exists():
            raise ClusterError(
                f"a real cluster is already up in {owner} (one per machine): "
                f"python -m tests.cluster real-down --workdir {owner}"
            )
    owner_file.write_text(str(workdir))


def _state_alive(workdir: Path, state: dict[str, Any]) -> bool:
    """True while any process the state recorded still runs as part of that cluster (its argv
    names the workdir, so a reused pid does not count)."""
    root = Path(workdir).absolute()
    return any(pid_alive(p) and _proc_in(p, root) for p in state.get("pids", []))


# ---- host helpers ------------------------------------------------------------------------------


def _sysctl_get(key: str) -> str | None:
    try:
        return Path("/proc/sys", key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def _mountpoints() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        out.append(mp)
    return out


def _is_mountpoint(path: Path) -> bool:
    return str(path) in _mountpoints()


def mounts_under(path: Path) -> list[str]:
    root = str(path.absolute())
    return [m for m in _mountpoints() if m == root or m.startswith(root + "/")]


def _unmount_under(path: Path) -> None:
    for _ in range(5):
        found = mounts_under(path)
        if not found:
            return
        for mp in sorted(found, key=len, reverse=True):
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


def _cgroup_dirs(name: str) -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    return [h / name for h in sorted(CGROUP_ROOT.iterdir()) if (h / "cgroup.procs").exists()]


def cgroups_of(name: str) -> list[Path]:
    """The cgroup directories named ``name`` that exist in any hierarchy."""
    return [p for p in _cgroup_dirs(name) if p.exists()]


def _make_cgroups(name: str) -> None:
    """The kubelet's cgroupRoot must exist in every v1 hierarchy (and the v2 one) beforehand."""
    for path in _cgroup_dirs(name):
        path.mkdir(exist_ok=True)
        if (path / "cpuset.cpus").exists():  # v1 cpuset children start empty
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (path / f).read_text().strip():
                    (path / f).write_text((path.parent / f).read_text())


def _kill_cgroup(name: str) -> None:
    for top in cgroups_of(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)


def _remove_cgroups(name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = cgroups_of(name)
        if not left:
            return
        for top in left:
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        time.sleep(0.2)


def _kill_in_netns(name: str) -> None:
    try:
        inode = os.stat(ns.path(name)).st_ino
    except OSError:
        return
    for _ in range(50):
        left = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode and pid_alive(int(entry.name)):
                    left.append(int(entry.name))
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _proc_in(pid: int, node_dir: Path) -> bool:
    """True if the live process ``pid`` belongs to ``node_dir`` (a node or a whole cluster) by
    its argv."""
    return any(str(node_dir) in a for a in _cmdline(pid))


def _pids_with_arg(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(text in a for a in _cmdline(int(entry.name))):
            out.append(int(entry.name))
    return out


def node_processes(workdir: Path) -> list[int]:
    """Every live process whose argv mentions the cluster's workdir (nodes, shims, plane)."""
    return [p for p in _pids_with_arg(str(Path(workdir).absolute())) if p not in _ancestry()]


def _ancestry() -> set[int]:
    """This process and its parents (a shell that started us may name the workdir too)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
    return out


# ---- configuration -----------------------------------------------------------------------------


def _containerd_config(node: NodeSpec) -> str:
    d = node.dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails (oom_score_adj -998)
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/containerd/runc"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
"""


def _cni_config(node: NodeSpec) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(node: NodeSpec, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        # cgroup v1 hybrid host: allowed explicitly; our own root per kubelet, cgroupfs driver.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup_name}",
        # Pods never get the VM's resolver; names resolve through kube-dns only.
        "resolvConf": "",
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "podLogsDir": str(node.dir / "pod-logs"),
        "failSwapOn": False,
        # Images are imported, never pulled: keep them whatever the disk usage.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "rotateCertificates": False,
    }


def _proxy_config(node: NodeSpec, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # 0 = leave the (host-global) conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def _coredns_manifests(image: str) -> list[dict[str, Any]]:
    corefile = """.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        ttl 30
    }
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}
"""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "priorityClassName": "system-cluster-critical",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153},
                                ],
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "initialDelaySeconds": 10,
                                },
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "protocol": "TCP"},
                ],
            },
        },
    ]


def _local_path_manifests(
    upstream: Path, image: str, nodes: Sequence[NodeSpec]
) -> list[dict[str, Any]]:
    """kind's default StorageClass: the provisioner's own manifest, with local images, a
    directory per node under its node dir, and the class marked default."""
    docs = [d for d in yaml.safe_load_all(upstream.read_text()) if d]
    for doc in docs:
        kind = doc["kind"]
        if kind == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                c["image"] = image
                c["imagePullPolicy"] = "Never"
        elif kind == "StorageClass":
            doc["metadata"].setdefault("annotations", {})[
                "storageclass.kubernetes.io/is-default-class"
            ] = "true"
        elif kind == "ConfigMap":
            doc["data"]["config.json"] = json.dumps(
                {
                    "nodePathMap": [
                        {"node": n.name, "paths": [str(n.dir / "local-path")]} for n in nodes
                    ]
                }
            )
            helper = yaml.safe_load(doc["data"]["helperPod.yaml"])
            for c in helper["spec"]["containers"]:
                c["image"] = images.BASE_IMAGE
                c["imagePullPolicy"] = "Never"
            doc["data"]["helperPod.yaml"] = yaml.safe_dump(helper)
    return docs
