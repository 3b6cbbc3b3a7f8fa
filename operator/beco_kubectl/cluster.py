"""The Kubernetes API side of the plugin: the kubeconfig as kubectl reads it, and the objects."""

from __future__ import annotations

import base64
from typing import Any

from beco_operator import backup, names
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

Obj = dict[str, Any]


class ClusterError(Exception):
    """The API could not be reached or refused; the message says which and why."""


class NotFound(ClusterError):
    pass


def _explain(exc: ApiException, what: str) -> ClusterError:
    if exc.status == 404:
        return NotFound(f"{what} not found")
    if exc.status in (401, 403):
        return ClusterError(f"the cluster refused to let you read or change {what} "
                            f"(HTTP {exc.status}): check your kubeconfig user's RBAC")  # fmt: skip
    return ClusterError(f"{what}: HTTP {exc.status} {exc.reason}")


class Cluster:
    def __init__(
        self,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
        request_timeout: float,
    ) -> None:
        try:
            contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            active = (
                next((c for c in contexts if c["name"] == context), None) if context else current
            )
            if context and active is None:
                raise ClusterError(f"context {context!r} not found in the kubeconfig")
            self.api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context
            )
        except (ConfigException, OSError) as exc:
            raise ClusterError(f"cannot load the kubeconfig: {exc}") from None
        self.kubeconfig, self.context = kubeconfig, context
        self.namespace = (
            namespace or (active or {}).get("context", {}).get("namespace") or "default"
        )
        self.timeout = request_timeout
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kw)
        except ApiException as exc:
            raise _explain(exc, what) from None
        except (HTTPError, OSError) as exc:
            host = self.api_client.configuration.host
            raise ClusterError(f"cannot reach the Kubernetes API at {host}: {exc}") from None

    def network(self, name: str) -> Obj:
        obj: Obj = self._call(
            f"BecoNetwork {self.namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            names.GROUP,
            names.VERSION,
            self.namespace,
            names.PLURAL,
            name,
        )
        return obj

    def annotate_network(self, name: str, annotations: dict[str, str]) -> Obj:
        obj: Obj = self._call(
            f"BecoNetwork {self.namespace}/{name}",
            self.custom.patch_namespaced_custom_object,
            names.GROUP,
            names.VERSION,
            self.namespace,
            names.PLURAL,
            name,
            {"metadata": {"annotations": annotations}},
        )
        return obj

    def _list(self, what: str, fn: Any, selector: str) -> list[Obj]:
        out = self._call(what, fn, self.namespace, label_selector=selector)
        items: list[Obj] = self.api_client.sanitize_for_serialization(out)["items"]
        return items

    def pods(self, network: str) -> list[Obj]:
        return self._list(
            f"pods of {network}", self.core.list_namespaced_pod, names.network_selector(network)
        )

    def key_secrets(self, network: str) -> list[Obj]:
        """The members' key Secrets: only their metadata is used (the keys stay unread)."""
        sel = f"{names.network_selector(network)},{names.KEY_LABEL}=node"
        return [
            {"metadata": s["metadata"]}
            for s in self._list(f"key Secrets of {network}", self.core.list_namespaced_secret, sel)
        ]

    def membership(self, network: str) -> str:
        cm_name = names.membership_configmap(network)
        cm = self._call(
            f"ConfigMap {self.namespace}/{cm_name}",
            self.core.read_namespaced_config_map,
            cm_name,
            self.namespace,
        )
        text = (cm.data or {}).get(names.MEMBERSHIP_KEY)
        if not text:
            raise ClusterError(f"ConfigMap {cm_name} has no {names.MEMBERSHIP_KEY} yet")
        return str(text)

    def client_tls(self, network: str) -> dict[str, bytes]:
        """The application client certificate the operator issues: tls.crt, tls.key, ca.crt."""
        sec_name = names.client_tls_secret(network)
        sec = self._call(
            f"Secret {self.namespace}/{sec_name}",
            self.core.read_namespaced_secret,
            sec_name,
            self.namespace,
        )
        data = sec.data or {}
        missing = [
            k for k in (names.TLS_CERT_KEY, names.TLS_KEY_KEY, names.CA_CERT_KEY) if k not in data
        ]
        if missing:
            raise ClusterError(f"Secret {sec_name} lacks {', '.join(missing)}")
        return {k: base64.b64decode(v) for k, v in data.items()}

    # ---- backup and restore ---------------------------------------------------------------

    def _maybe(self, what: str, fn: Any, *args: Any) -> Obj | None:
        try:
            obj = self._call(what, fn, *args)
        except NotFound:
            return None
        out: Obj = self.api_client.sanitize_for_serialization(obj)
        return out

    def network_or_none(self, name: str) -> Obj | None:
        try:
            return self.network(name)
        except NotFound:
            return None

    def secret(self, name: str) -> Obj | None:
        return self._maybe(
            f"Secret {self.namespace}/{name}",
            self.core.read_namespaced_secret,
            name,
            self.namespace,
        )

    def pvc(self, name: str) -> Obj | None:
        return self._maybe(
            f"PersistentVolumeClaim {self.namespace}/{name}",
            self.core.read_namespaced_persistent_volume_claim,
            name,
            self.namespace,
        )

    def job(self, name: str) -> Obj | None:
        return self._maybe(
            f"Job {self.namespace}/{name}",
            self.batch.read_namespaced_job,
            name,
            self.namespace,
        )

    def create(self, obj: Obj) -> None:
        """Create a Secret, PersistentVolumeClaim, Job or BecoNetwork in this namespace."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        what = f"{kind} {self.namespace}/{name}"
        obj["metadata"]["namespace"] = self.namespace
        if kind == names.KIND:
            self._call(
                what,
                self.custom.create_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                self.namespace,
                names.PLURAL,
                obj,
            )
            return
        fn = {
            "Secret": self.core.create_namespaced_secret,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Job": self.batch.create_namespaced_job,
        }[kind]
        self._call(what, fn, self.namespace, obj)

    def delete_job(self, name: str) -> None:
        self._call(
            f"Job {self.namespace}/{name}",
            self.batch.delete_namespaced_job,
            name,
            self.namespace,
            propagation_policy="Background",
        )

    def job_pods(self, job: str) -> list[Obj]:
        return self._list(
            f"pods of Job {job}", self.core.list_namespaced_pod, f"{backup.BACKUP_LABEL}={job}"
        )

    def pod_log(self, pod: str) -> str:
        out = self._call(
            f"the log of pod {self.namespace}/{pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
        )
        return str(out)
