"""Helpers for the operator's integration tests: the operator as a real process, and API waits.

The operator runs as ``beco-operator`` (the console script) with a kubeconfig of
a ServiceAccount bound to ``deploy/rbac/operator-rbac.yaml``, so the tests also
prove the RBAC is enough.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.plane import ControlPlane
from tests.cluster.rest import ApiError

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "beconetworks.beco.dev.yaml"
RBAC_FILE = ROOT / "deploy" / "rbac" / "operator-rbac.yaml"
GROUP_PATH = "/apis/beco.dev/v1alpha1"
# Not the chart's defaults: the ship tests may install the chart into the same session plane.
OPERATOR_NS = "beco-operator-test"
NAME_SUFFIX = "-optest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``check()`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ApiError, KeyError, OSError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def install_crd(cp: ControlPlane) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    name = crd["metadata"]["name"]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        cp.api("POST", path, crd)
    except ApiError as exc:
        if exc.status != 409:
            raise
        current = cp.api("GET", f"{path}/{name}")
        crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        cp.api("PUT", f"{path}/{name}", crd)

    def established() -> bool:
        obj = cp.api("GET", f"{path}/{name}")
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )

    wait(established, 30, "the CRD to be established")
    wait(lambda: cp.exists(f"{GROUP_PATH}/beconetworks"), 30, "the CRD's API to be served")


_RBAC_PATHS = {
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
}


def install_rbac(cp: ControlPlane) -> Path:
    """Apply the operator's RBAC; return a kubeconfig of its ServiceAccount."""
    cp.rest.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
    )
    for doc in yaml.safe_load_all(RBAC_FILE.read_text()):
        if doc["kind"] == "Namespace":  # the tests use their own
            continue
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += NAME_SUFFIX
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += NAME_SUFFIX
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = OPERATOR_NS
        for subject in doc.get("subjects", []):
            subject["namespace"] = OPERATOR_NS
        cp.rest.create(_RBAC_PATHS[doc["kind"]].format(ns=OPERATOR_NS), doc)
    return cp.service_account_kubeconfig(OPERATOR_NS, "beco-operator")


class OperatorProcess:
    """``beco-operator`` as a subprocess; logs go to a file the tests print on failure."""

    def __init__(
        self,
        kubeconfig: Path | None,
        log_path: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig  # None: in-cluster credentials from ``env``
        self.log_path = log_path
        self.extra = extra
        self.env = env or {}
        self.metrics_port = 0  # chosen at each start (two unstarted processes got one port)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 3) -> None:
        """Run it and wait for ITS metrics endpoint: a port another process took meanwhile
        makes it exit, and then it starts again on another port."""
        for _ in range(attempts):
            self._launch()
            wait(self._up_or_exited, 30, "the operator's metrics endpoint")
            if self.proc is not None and self.proc.poll() is None:
                return
        raise RuntimeError(f"the operator exited at start {attempts} times:\n{self.log_tail()}")

    def _up_or_exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or self.metrics_text() is not None

    def _launch(self) -> None:
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(self.env)
        exe = Path(sys.executable).parent / "beco-operator"
        cmd = [
            str(exe),
            "--metrics-host=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            *self.extra,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """A hard stop, as a crash or an evicted pod would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as r:
                return str(r.read().decode())
        except OSError:
            return None

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = self.metrics_text() or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def network(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"zones": ["a", "b", "c"], "userNodes": {"perZone": 1}}
    body.update(spec)
    return {
        "apiVersion": "beco.dev/v1alpha1",
        "kind": "BecoNetwork",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def net_path(namespace: str, name: str = "") -> str:
    p = f"{GROUP_PATH}/namespaces/{namespace}/beconetworks"
    return f"{p}/{name}" if name else p


def get_network(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(cp.api("GET", net_path(namespace, name)))


def wait_ready(cp: ControlPlane, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get_network(cp, namespace, name)
        st = obj.get("status") or {}
        if (
            st.get("phase") == "Ready"
            and st.get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return obj
        return None

    return dict(wait(ready, timeout, f"{namespace}/{name} to be Ready"))


def merge_patch(cp: ControlPlane, path: str, patch: dict[str, Any]) -> Any:
    return cp.api("PATCH", path, patch, content_type="application/merge-patch+json")


def items(cp: ControlPlane, path: str, selector: str = "") -> list[dict[str, Any]]:
    q = f"?labelSelector={selector}" if selector else ""
    return list(cp.api("GET", path + q)["items"])


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)[:4000]


class PodWatch:
    """Follows pods through the API's watch stream: ready counts after every event."""

    def __init__(self, cp: ControlPlane, namespace: str, selector: str) -> None:
        from kubernetes import client as k8s

        self.core = k8s.CoreV1Api(cp.kubernetes_client())
        self.namespace = namespace
        self.selector = selector
        self.ready: dict[str, bool] = {}
        self.ready_counts: list[int] = []
        self.unready_counts: list[int] = []
        self._stop = False
        self._thread: Any = None
        self.error: Exception | None = None

    @staticmethod
    def _is_ready(pod: Any) -> bool:
        if pod.metadata.deletion_timestamp is not None:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))

    def start(self) -> None:
        import threading

        from kubernetes import watch

        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        for p in pods.items:
            self.ready[p.metadata.name] = self._is_ready(p)
        rv = pods.metadata.resource_version

        def run() -> None:
            try:
                follow()
            except Exception as exc:  # a stream cut after stop() is fine; before, it is a failure
                if not self._stop:
                    self.error = exc

        def follow() -> None:
            w = watch.Watch()
            for ev in w.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=self.selector,
                resource_version=rv,
                timeout_seconds=300,
            ):
                pod = ev["object"]
                self.ready[pod.metadata.name] = ev["type"] != "DELETED" and self._is_ready(pod)
                if ev["type"] == "DELETED":
                    self.ready.pop(pod.metadata.name, None)
                self.ready_counts.append(sum(self.ready.values()))
                self.unready_counts.append(sum(1 for v in self.ready.values() if not v))
                if self._stop:
                    w.stop()
                    return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(timeout=2)  # ends with its next event or its timeout
        if self.error is not None:
            raise AssertionError(f"the pod watch broke off: {self.error}")
