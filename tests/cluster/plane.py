"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, each a real process on free loopback ports, all files in one workdir.

Start order and readiness:

1. certificates (own CA, serving cert, client certs, ServiceAccount signing key) and kubeconfigs;
2. etcd, waited on ``/health``;
3. kube-apiserver (client-cert authn, RBAC, ServiceAccount admission and TokenRequest), waited
   on ``/readyz``;
4. kube-controller-manager (each controller with its own ServiceAccount credentials), kube-scheduler
   and kwok together, and meanwhile the bootstrap objects: the default StorageClass
   ``kwok-volume`` (kwok's volume stages provision and bind its PVCs) and fake Nodes labelled
   ``topology.kubernetes.io/zone``;
5. then it waits for the controller-manager's and scheduler's ``/healthz``, every node Ready
   without a not-ready taint, and the ``default`` ServiceAccount.

Every start is a fresh cluster: etcd's data and old logs in the workdir are removed first.

A free port may be taken by another process between choosing and binding it; if a component
fails with "address already in use" the whole start is retried with new ports.

``stop()`` stops the components in reverse order (process groups, SIGTERM then SIGKILL) and is
safe to call twice; see ``process.py`` for the interrupt/exit safety nets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import netns as ns
from .binaries import REQUIRED, check_bin_dir, default_bin_dir, stages_dir
from .kubeconfig import write_kubeconfig
from .pki import CertificateAuthority, CertPair, service_account_keys
from .process import Process, forget, pid_alive, stop_pids
from .rest import ApiError, RestClient

ZONE_LABEL = "topology.kubernetes.io/zone"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
STORAGE_CLASS = "kwok-volume"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: kwok stage files loaded from the stages dir (see tools/controlplane/build.sh).
KWOK_STAGES = (
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
    "pvc-provision.yaml",
    "pv-bind.yaml",
    "pvc-delete.yaml",
    "pv-delete.yaml",
)


class ControlPlaneError(RuntimeError):
    """The plane failed to start (the message carries the failing component's log tail)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held open together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class ControlPlane:
    """One control plane. ``ControlPlane(workdir).start()`` ... ``.stop()``, or use ``with``."""

    def __init__(
        self,
        workdir: Path,
        zones: Sequence[str] = ("a", "b", "c"),
        nodes_per_zone: int = 2,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 180.0,
        die_with_parent: bool = True,
        netns: str | None = None,
        advertise_ip: str | None = None,
        kwok: bool = True,
    ) -> None:
        """``netns``/``advertise_ip``/``kwok=False`` are for the real cluster (real.py): every
        component runs inside that network namespace, the API server listens on
        ``advertise_ip`` there too (pods reach it), clients on the host reach it through a
        forwarder on 127.0.0.1, and real kubelets replace kwok's fake nodes."""
        self.workdir = Path(workdir).absolute()
        self.zones = tuple(zones)
        self.nodes_per_zone = nodes_per_zone
        self.bin_dir = (bin_dir or default_bin_dir()).absolute()
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.netns = netns
        self.advertise_ip = advertise_ip or "127.0.0.1"
        self.kwok = kwok
        self.ports: dict[str, int] = {}
        self.processes: list[Process] = []
        self._admin: CertPair | None = None
        self._ca: CertPair | None = None
        self._rest: RestClient | None = None
        self._detail = ""  # why the current readiness check is still false, for timeouts
        if kwok and (not self.zones or nodes_per_zone < 1):
            raise ValueError("need at least one zone and one node per zone")
        if (netns is None) != (advertise_ip is None):
            raise ValueError("netns and advertise_ip go together")

    # ---- public attributes -------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate in group system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def node_names(self) -> list[str]:
        if not self.kwok:
            return []
        return [f"kwok-{z}-{i}" for z in self.zones for i in range(self.nodes_per_zone)]

    @property
    def internal_api_url(self) -> str:
        """The API server as components and nodes reach it (== api_url without a netns)."""
        if self.netns is None:
            return self.api_url
        return f"https://{self.advertise_ip}:{self.ports['apiserver-internal']}"

    @property
    def rest(self) -> RestClient:
        """A stdlib JSON client authenticated as admin."""
        if self._rest is None:
            raise RuntimeError("control plane not started")
        return self._rest

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """Shortcut for ``self.rest.request`` (JSON in, JSON out, ApiError on failure)."""
        return self.rest.request(method, path, body, **kw)

    def exists(self, path: str) -> bool:
        """True if GET ``path`` answers 200."""
        return _rest_ok(self.rest, path)

    def wait_for(
        self,
        check: Callable[[], bool],
        timeout: float = 60.0,
        what: str = "",
        interval: float = 0.2,
    ) -> None:
        """Poll ``check`` until it is true; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
            time.sleep(interval)

    def env(self) -> dict[str, str]:
        """Environment variables pointing a client (kubectl, helm, kopf) at this plane."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "BECO_CONTROLPLANE_BIN": str(self.bin_dir),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def kubernetes_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this plane (no global configuration touched)."""
        from kubernetes import config  # the harness itself needs only the stdlib client

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    # ---- service accounts --------------------------------------------------------------------

    def service_account_token(
        self,
        namespace: str,
        name: str,
        expiration_seconds: int = 3600,
        audiences: Sequence[str] = (),
    ) -> str:
        """A bound token for an existing ServiceAccount, from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        result = self.api("POST", path, body)
        return str(result["status"]["token"])

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None
    ) -> Path:
        """A kubeconfig authenticating as the ServiceAccount (to test RBAC as it would run)."""
        token = self.service_account_token(namespace, name)
        target = path or self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        return write_kubeconfig(
            target,
            self.api_url,
            self.ca_file.read_bytes(),
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        check_bin_dir(self.bin_dir, REQUIRED if self.kwok else REQUIRED[:-1])
        stages = stages_dir(self.bin_dir)
        missing = [s for s in KWOK_STAGES if not (stages / s).is_file()] if self.kwok else []
        if missing:
            raise ControlPlaneError(f"kwok stage files missing in {stages}: {', '.join(missing)}")
        if self.processes:
            raise RuntimeError("control plane already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                self._start_once()
                return
            except BaseException as exc:
                in_use = any("address already in use" in p.log_tail(200) for p in self.processes)
                self.stop()
                if isinstance(exc, ControlPlaneError) and in_use and attempt < 2:
                    continue
                raise

    def stop(self) -> None:
        """Stop every component (newest first) and forget them. Idempotent."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes = []
        self._rest = None
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- detached use (python -m tests.cluster up/down) ----------------------------------------

    def save_state(self) -> Path:
        path = self.workdir / "state.json"
        state = {
            "pids": self.pids(),
            "ports": self.ports,
            "api_url": self.api_url,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
        }
        path.write_text(json.dumps(state, indent=2))
        return path

    def detach(self) -> Path:
        """Leave the plane running after this interpreter exits; stop it with stop_detached."""
        if self.die_with_parent:
            raise RuntimeError("a detached plane needs ControlPlane(..., die_with_parent=False)")
        path = self.save_state()
        forget(self.pids())
        self.processes = []
        return path

    @staticmethod
    def stop_detached(workdir: Path) -> list[int]:
        """Stop a plane started by another process (``up``); return the pids that were stopped."""
        path = Path(workdir) / "state.json"
        if not path.exists():
            return []
        pids = [int(p) for p in json.loads(path.read_text())["pids"]]
        stop_pids(list(reversed(pids)))
        still = [p for p in pids if pid_alive(p)]
        if still:
            raise ControlPlaneError(f"processes still alive after stop: {still}")
        path.unlink()
        return pids

    # ---- internals ---------------------------------------------------------------------------

    def _start_once(self) -> None:
        wd = self.workdir
        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        if self.netns is not None:
            # Inside the namespace every port is ours; "apiserver" is the host-side forwarder.
            self.ports["apiserver-internal"] = 6443
        deadline = time.monotonic() + self.start_timeout
        shutil.rmtree(wd / "etcd", ignore_errors=True)
        shutil.rmtree(wd / "logs", ignore_errors=True)
        (wd / "logs").mkdir()
        pki = wd / "pki"
        ca = CertificateAuthority(pki)
        self._ca = ca.pair
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=tuple(dict.fromkeys(("127.0.0.1", self.advertise_ip, "10.96.0.1"))),
        )
        self._admin = ca.issue("admin", "beco-admin", ("system:masters",))
        kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        sched = ca.issue("scheduler", "system:kube-scheduler")
        kwok = ca.issue("kwok", "kwok", ("system:masters",))
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver", ("system:masters",))
        sa = service_account_keys(pki)

        # Components beside the API server reach it on loopback (inside the netns if any).
        local = (
            f"https://127.0.0.1:{p_api}"
            if (p_api := self.ports.get("apiserver-internal"))
            else None
        )
        self._kubeconfig(self.kubeconfig, "beco-admin", self._admin)
        kcm_cfg = self._kubeconfig(wd / "controller-manager.kubeconfig", "kcm", kcm, local)
        sched_cfg = self._kubeconfig(wd / "scheduler.kubeconfig", "scheduler", sched, local)
        kwok_cfg = self._kubeconfig(wd / "kwok.kubeconfig", "kwok", kwok)

        b = self.bin_dir
        p = self.ports
        etcd = self._spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=default",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-cluster=default=http://127.0.0.1:{p['etcd-peer']}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(
            deadline, etcd, self._inside(lambda: _http_ok(f"http://127.0.0.1:{p['etcd']}/health"))
        )
        real: list[str] = []
        if self.netns is not None:
            real = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                f"--kubelet-certificate-authority={ca.pair.cert}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
            self.processes.append(self._forwarder())

        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                f"--bind-address={'0.0.0.0' if self.netns else '127.0.0.1'}",
                f"--advertise-address={self.advertise_ip}",
                f"--secure-port={p.get('apiserver-internal', p['apiserver'])}",
                f"--cert-dir={wd / 'apiserver'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.pair.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                *(real or ["--authorization-mode=RBAC"]),
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--profiling=false",
                "--v=0",
            ],
        )
        rest = RestClient(self.api_url, ca.pair.cert, self._admin.cert, self._admin.key)
        self._wait(deadline, apiserver, lambda: _rest_ok(rest, "/readyz"))
        self._rest = rest

        secure_common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--v=0"]
        kcm_proc = self._spawn(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kcm_cfg}",
                f"--secure-port={p['controller-manager']}",
                f"--cert-dir={wd / 'controller-manager'}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.pair.cert}",
                f"--cluster-signing-cert-file={ca.pair.cert}",
                f"--cluster-signing-key-file={ca.pair.key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                *([f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false"] if real else []),
                *secure_common,
            ],
        )
        sched_proc = self._spawn(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={sched_cfg}",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={wd / 'scheduler'}",
                *secure_common,
            ],
        )
        if not self.kwok:
            self._wait(
                deadline,
                kcm_proc,
                self._inside(
                    lambda: _https_ok(f"https://127.0.0.1:{p['controller-manager']}/healthz")
                ),
            )
            self._wait(
                deadline,
                sched_proc,
                self._inside(lambda: _https_ok(f"https://127.0.0.1:{p['scheduler']}/healthz")),
            )
            self._wait(
                deadline,
                kcm_proc,
                lambda: _rest_ok(rest, "/api/v1/namespaces/default/serviceaccounts/default"),
                "the default ServiceAccount",
            )
            self.save_state()
            return
        stage_file = wd / "kwok-stages.yaml"
        stages = stages_dir(self.bin_dir)
        stage_file.write_text(
            "\n---\n".join((stages / s).read_text().strip() for s in KWOK_STAGES) + "\n"
        )
        kwok_proc = self._spawn(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={kwok_cfg}",
                f"--config={stage_file}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
            ],
        )
        # Nodes and the StorageClass can be created while the controllers warm up.
        self._bootstrap(stages)
        self._wait(
            deadline,
            kcm_proc,
            lambda: _https_ok(f"https://127.0.0.1:{p['controller-manager']}/healthz"),
        )
        self._wait(
            deadline, sched_proc, lambda: _https_ok(f"https://127.0.0.1:{p['scheduler']}/healthz")
        )

        self._wait(deadline, kwok_proc, self._nodes_ready, "nodes Ready and untainted")
        self._wait(
            deadline,
            kcm_proc,
            lambda: _rest_ok(rest, "/api/v1/namespaces/default/serviceaccounts/default"),
            "the default ServiceAccount",
        )
        self.save_state()

    def _kubeconfig(self, path: Path, user: str, pair: CertPair, server: str | None = None) -> Path:
        assert self._ca is not None
        return write_kubeconfig(
            path,
            server or self.api_url,
            self._ca.cert_pem(),
            user=user,
            cert_pem=pair.cert_pem(),
            key_pem=pair.key_pem(),
        )

    def _inside(self, check: Callable[[], bool]) -> Callable[[], bool]:
        """``check`` run from inside the plane's network namespace (as is without one)."""
        if self.netns is None:
            return check
        name = self.netns
        return lambda: ns.call_in(name, check)

    def _forwarder(self) -> Process:
        """127.0.0.1:<apiserver> on the host -> the API server inside the namespace."""
        assert self.netns is not None
        argv = [
            sys.executable,
            str(Path(__file__).with_name("forward.py")),
            f"127.0.0.1:{self.ports['apiserver']}",
            str(ns.path(self.netns)),
            f"127.0.0.1:{self.ports['apiserver-internal']}",
        ]
        proc = Process(
            "api-forwarder",
            argv,
            self.workdir / "logs" / "api-forwarder.log",
            die_with_parent=self.die_with_parent,
        )
        proc.start()
        return proc

    def _spawn(self, name: str, argv: list[str]) -> Process:
        if self.netns is not None:
            argv = ns.prefix(self.netns) + argv
        proc = Process(
            name, argv, self.workdir / "logs" / f"{name}.log", die_with_parent=self.die_with_parent
        )
        proc.start()
        self.processes.append(proc)
        return proc

    def _wait(
        self, deadline: float, proc: Process, check: Callable[[], bool], what: str = ""
    ) -> None:
        """Poll ``check`` until true; fail early with the log tail if ``proc`` died."""
        delay = 0.05
        self._detail = ""
        while True:
            code = proc.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {code}; log {proc.log}:\n{proc.log_tail()}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out waiting for {what or proc.name}; log {proc.log}:\n{proc.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _bootstrap(self, stages: Path) -> None:
        rest = self.rest
        sc = yaml.safe_load((stages / "storage-class.yaml").read_text())
        rest.create("/apis/storage.k8s.io/v1/storageclasses", sc)
        for zone in self.zones:
            for i in range(self.nodes_per_zone):
                rest.create("/api/v1/nodes", _node(f"kwok-{zone}-{i}", zone))

    def _nodes_ready(self) -> bool:
        try:
            nodes = self.rest.get("/api/v1/nodes")["items"]
        except (ApiError, OSError) as exc:
            self._detail = f"listing nodes: {exc}"
            return False
        by_name = {n["metadata"]["name"]: n for n in nodes}
        for name in self.node_names:
            node = by_name.get(name)
            if node is None:
                self._detail = f"node {name} missing"
                return False
            conds = node.get("status", {}).get("conditions") or []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                self._detail = f"node {name} not Ready"
                return False
            taints = node.get("spec", {}).get("taints") or []
            blocking = [t["key"] for t in taints if t["key"].startswith("node.kubernetes.io/")]
            if blocking:
                self._detail = f"node {name} tainted {', '.join(blocking)}"
                return False
        return True


def _node(name: str, zone: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node.kubernetes.io/instance-type": "kwok",
                "type": "kwok",
                ZONE_LABEL: zone,
                "topology.kubernetes.io/region": "beco-test",
            },
        },
        "spec": {},
        "status": {"allocatable": resources, "capacity": resources},
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


_insecure = ssl.create_default_context()
_insecure.check_hostname = False
_insecure.verify_mode = ssl.CERT_NONE


def _https_ok(url: str) -> bool:
    """Health of a component serving its own self-signed certificate."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=_insecure) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _rest_ok(rest: RestClient, path: str) -> bool:
    try:
        status, _ = rest.raw("GET", path)
    except OSError:
        return False
    return status == 200
