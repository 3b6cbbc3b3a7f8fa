"""A small asyncio client for the Kubernetes API, over aiohttp (kopf's HTTP stack).

kopf watches and dispatches; this client does the operator's own reads and
writes: server-side apply (``application/apply-patch+yaml`` with a field
manager), create-only POSTs for keys, deletes, status merge patches and Events.
Every write is counted in ``beco_operator_api_writes_total``, which is how the
idle-quiet benchmark checks that a converged network causes no writes.
Credentials come from the same place kopf takes them: the pod's service
account, else the kubeconfig.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from beco_operator import kinds, metrics, names
from beco_operator.names import Obj

# Where the kubelet mounts a pod's ServiceAccount (the variable lets a test stand in for it).
SA_DIR = Path(
    os.environ.get("BECO_OPERATOR_SERVICEACCOUNT_DIR")
    or "/var/run/secrets/kubernetes.io/serviceaccount"
)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    k = kinds.BY_KIND[kind]
    p = k.prefix
    if k.namespaced and namespace:
        p += f"/namespaces/{namespace}"
    p += f"/{k.plural}"
    if name:
        p += f"/{name}"
    return p


def in_cluster(
    env: Mapping[str, str] = os.environ, sa_dir: Path | None = None
) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount, with the API server's address from the environment the
    kubelet sets (as client-go's in-cluster config): no dependency on cluster DNS, which
    kopf's own ``login_with_service_account`` (``kubernetes.default.svc``) has."""
    sa = sa_dir or SA_DIR
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token_file = sa / "token"
    if not host or not port or not token_file.exists():
        return None
    ca = sa / "ca.crt"
    ns = sa / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://{f'[{host}]' if ':' in host else host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token=token_file.read_text().strip() or None,
        default_namespace=ns.read_text().strip() if ns.exists() else None,
    )


def login() -> kopf.ConnectionInfo:
    """Credentials: in-cluster service account first, then the kubeconfig."""
    info = in_cluster() or kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to log in with")
    return info


def _as_text(data: Any) -> str:
    """PEM text from kopf's credential data, which may still be base64 (as in a kubeconfig)."""
    text = data.decode() if isinstance(data, bytes) else str(data)
    if "-----BEGIN" not in text:
        text = base64.b64decode(text).decode()
    return text


class Kube:
    """One aiohttp session to the API server; create it inside the running loop."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        ctx = ssl.create_default_context()
        if info.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if info.ca_path:
            ctx.load_verify_locations(cafile=info.ca_path)
        if info.ca_data:
            ctx.load_verify_locations(cadata=_as_text(info.ca_data))
        cert, key = info.certificate_path, info.private_key_path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if info.certificate_data and info.private_key_data:
            self._tmp = tempfile.TemporaryDirectory(prefix="beco-op-")
            cert = os.path.join(self._tmp.name, "cert.pem")
            key = os.path.join(self._tmp.name, "key.pem")
            for p, data in ((cert, info.certificate_data), (key, info.private_key_data)):
                fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(_as_text(data))
        if cert and key:
            ctx.load_cert_chain(cert, key)
        self._headers = {"Accept": "application/json"}
        if info.token:
            self._headers["Authorization"] = f"Bearer {info.token}"
        # The kubelet rotates a pod's projected token file: re-read it when the server says 401.
        token_file = SA_DIR / "token"
        self._token_file = token_file if info.token and token_file.exists() else None
        self._ssl = ctx if self.server.startswith("https") else False
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        kind: str = "",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        if method != "GET":
            metrics.API_WRITES.labels(method, kind).inc()
        for attempt in range(4):
            try:
                async with self._sess().request(
                    method, self.server + url, data=data, headers=headers, params=params
                ) as resp:
                    if resp.status == 401 and attempt == 0 and await self._reload_token():
                        continue
                    text = await resp.text()
                    try:
                        obj = json.loads(text) if text else None
                    except ValueError:
                        obj = {"message": text[:200]}  # e.g. a plain "404 page not found"
                    if resp.status >= 400:
                        metrics.API_ERRORS.labels(str(resp.status)).inc()
                    return resp.status, obj
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == 3:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def _reload_token(self) -> bool:
        if self._token_file is None:
            return False
        token = (await asyncio.to_thread(Path(self._token_file).read_text)).strip()
        if not token or self._headers.get("Authorization") == f"Bearer {token}":
            return False
        self._headers["Authorization"] = f"Bearer {token}"
        if self._session is not None:
            await self._session.close()
            self._session = None
        return True

    @staticmethod
    def _raise(status: int, obj: Any) -> None:
        msg = obj.get("message", "") if isinstance(obj, dict) else str(obj)
        raise ApiError(status, msg)

    async def get(self, url: str) -> Obj | None:
        status, obj = await self.request("GET", url)
        if status == 404:
            return None
        if status >= 400:
            self._raise(status, obj)
        return dict(obj)

    async def list(self, url: str, selector: str | None = None) -> list[Obj]:
        params = {"labelSelector": selector} if selector else None
        status, obj = await self.request("GET", url, params=params)
        if status == 404:
            return []
        if status >= 400:
            self._raise(status, obj)
        return list(obj.get("items") or [])

    async def apply(self, obj: Obj) -> Obj:
        """Server-side apply ``obj`` as the operator's field manager (taking conflicts)."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"), meta["name"])
        status, out = await self.request(
            "PATCH",
            url,
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": names.FIELD_MANAGER, "force": "true"},
            kind=obj["kind"],
        )
        if status >= 400:
            self._raise(status, out)
        return dict(out)

    async def create(self, obj: Obj) -> Obj | None:
        """POST ``obj``; None when it exists already (never overwritten)."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"))
        status, out = await self.request(
            "POST", url, body=obj, params={"fieldManager": names.FIELD_MANAGER}, kind=obj["kind"]
        )
        if status == 409:
            return None
        if status >= 400:
            self._raise(status, out)
        return dict(out)

    async def replace(self, obj: Obj) -> Obj:
        """PUT ``obj`` (with its resourceVersion: fails on a concurrent change)."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"), meta["name"])
        status, out = await self.request(
            "PUT", url, body=obj, params={"fieldManager": names.FIELD_MANAGER}, kind=obj["kind"]
        )
        if status >= 400:
            self._raise(status, out)
        return dict(out)

    async def delete(self, kind: str, namespace: str, name: str, *, uid: str | None = None) -> bool:
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        status, out = await self.request(
            "DELETE", path(kind, namespace, name), body=body, kind=kind
        )
        if status in (404, 409):
            return False
        if status >= 400:
            self._raise(status, out)
        return True

    async def patch_status(self, kind: str, namespace: str, name: str, status_obj: Obj) -> None:
        url = path(kind, namespace, name) + "/status"
        status, out = await self.request(
            "PATCH",
            url,
            body={"status": status_obj},
            content_type="application/merge-patch+json",
            kind=kind,
        )
        if status >= 400 and status != 404:
            self._raise(status, out)

    async def has_api(self, group_version: str, kind: str) -> bool:
        status, obj = await self.request("GET", f"/apis/{group_version}")
        if status != 200 or not isinstance(obj, dict):
            return False
        return any(r.get("kind") == kind for r in obj.get("resources") or [])
