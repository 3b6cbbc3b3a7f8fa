"""A CLI session: ``kubectl port-forward`` to the client Service, then the ``beco`` CLI.

The session's files (membership, TLS client certificate and key) live in a private temporary
directory that is removed when the session ends.
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from beco_operator import names

from beco_kubectl.args import ClientFiles, beco_args
from beco_kubectl.cluster import Cluster

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


class ForwardError(Exception):
    pass


def kubectl_binary() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        raise ForwardError("kubectl not found on PATH (needed for the port-forward); set KUBECTL")
    return found


def kubectl_base(cluster: Cluster) -> list[str]:
    cmd = [kubectl_binary()]
    if cluster.kubeconfig:
        cmd += ["--kubeconfig", cluster.kubeconfig]
    if cluster.context:
        cmd += ["--context", cluster.context]
    return [*cmd, "-n", cluster.namespace]


@contextmanager
def port_forward(cluster: Cluster, service: str, port: int, timeout: float) -> Iterator[int]:
    """Forward a free local port on 127.0.0.1 to ``service:port``; yields the local port."""
    cmd = [*kubectl_base(cluster), "port-forward", "--address", "127.0.0.1"]
    cmd += [f"service/{service}", f":{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        local = 0
        while not local:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ForwardError(
                    f"kubectl port-forward to service/{service} not ready in {timeout:.0f}s"
                )
            if not sel.select(min(left, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            m = FORWARDING.search(line)
            if m:
                local = int(m[1])
        if not local:
            err = proc.stderr.read().strip()
            raise ForwardError(f"kubectl port-forward to service/{service} failed: {err}")
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uses_tls(net: dict[str, Any]) -> bool:
    return not bool(((net.get("spec") or {}).get("transport") or {}).get("insecure", False))


def service_port(net: dict[str, Any]) -> int:
    return int(((net.get("spec") or {}).get("service") or {}).get("port", names.PORT))


@contextmanager
def client_files(cluster: Cluster, net: dict[str, Any]) -> Iterator[tuple[Path, ClientFiles]]:
    """The membership (SST key) and, with TLS, the client certificate, in a private dir."""
    name = str(net["metadata"]["name"])
    with tempfile.TemporaryDirectory(prefix="kubectl-beco-") as tmp:
        d = Path(tmp)
        d.chmod(0o700)
        (d / "membership.json").write_text(cluster.membership(name))
        files = ClientFiles(membership=str(d / "membership.json"))
        if uses_tls(net):
            tls = cluster.client_tls(name)
            for fname, key in (
                ("ca.crt", names.CA_CERT_KEY),
                ("tls.crt", "tls.crt"),
                ("tls.key", "tls.key"),
            ):
                (d / fname).write_bytes(tls[key])
                (d / fname).chmod(0o600)
            files = ClientFiles(
                membership=files.membership,
                ca=str(d / "ca.crt"),
                cert=str(d / "tls.crt"),
                key=str(d / "tls.key"),
                server_name=f"{names.client_service(name)}.{cluster.namespace}.svc",
            )
        yield d, files


def beco_command(args: Sequence[str]) -> list[str]:
    """The beco CLI of this same installation."""
    return [sys.executable, "-m", "beco_node.cli.beco_cli", *args]


@functools.cache
def beco_has_client_cert() -> bool:
    """Whether this installation's beco takes a client certificate (``--tls-cert`` ...)."""
    out = subprocess.run(beco_command(["--help"]), capture_output=True, text=True, check=False)
    return all(f in out.stdout for f in ("--tls-cert", "--tls-key", "--tls-server-name"))


def session_args(port: int, files: ClientFiles, user_args: Sequence[str]) -> list[str]:
    """beco's arguments for this session (client certificate flags when beco has them)."""
    cert = bool(files.ca) and beco_has_client_cert()
    return beco_args(port, files, user_args, client_cert=cert)


def run_beco(
    args: Sequence[str], *, capture: bool, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        beco_command(args), capture_output=capture, text=True, check=False, timeout=timeout
    )
