"""A minimal HTTPS/JSON client for the API server (stdlib only).

The harness uses it for readiness checks and bootstrap objects, so it does not depend on the
``kubernetes`` client's configuration globals. Tests may use it too (``ControlPlane.api``).
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body


class RestClient:
    def __init__(
        self,
        url: str,
        ca_file: Path,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.timeout = timeout
        self.token = token
        self._ctx = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            self._ctx.load_cert_chain(str(cert_file), str(key_file))

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._ctx, timeout=self.timeout
        )
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        """Send a request; return the decoded JSON body, raise ApiError unless status in ``ok``."""
        status, data = self.raw(method, path, body, content_type)
        try:
            decoded: Any = json.loads(data) if data else None
        except ValueError:
            decoded = data.decode(errors="replace")
        if status not in ok:
            raise ApiError(status, method, path, decoded)
        return decoded

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        """POST, treating AlreadyExists (409) as success."""
        return self.request("POST", path, obj, ok=(200, 201, 202, 409))
