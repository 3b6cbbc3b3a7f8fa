"""The `beco` CLI against a network whose every port takes mutual TLS only: the user's own
client certificate, the CA, and a server-name override as for a port-forward."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from beco_node.local.network import LocalNetwork, free_base_port

from tests.integration.network.nodes import SERVING, Pki, make_pki, wait_health

pytestmark = pytest.mark.postgres
UNAVAILABLE_EXIT = 10 + grpc.StatusCode.UNAVAILABLE.value[0]


@pytest.fixture(scope="module")
def tls_network() -> Iterator[tuple[LocalNetwork, Pki]]:
    state = Path(tempfile.mkdtemp(prefix="beco-tls-"))
    pki = make_pki(state / "pki", ["beco.test"])  # and 127.0.0.1, not "localhost"
    env = {"BECO_TLS_CERT": str(pki.cert), "BECO_TLS_KEY": str(pki.key)}
    env["BECO_TLS_CA"] = str(pki.ca)
    net = LocalNetwork(state, base_port=free_base_port(), extra_env=env)

    async def up() -> None:
        net.prepare()
        await net.start_postgres()
        creds = pki.client_credentials()
        for name in net.order():
            net.start_node(name)
            n = net.nodes[name]
            if n.role == "sst":
                await wait_health(n.address, SERVING, creds=creds, proc=n.proc)
        for n in net.nodes.values():
            await wait_health(n.address, SERVING, creds=creds, proc=n.proc)

    try:
        asyncio.run(up())
        yield net, pki
    finally:
        asyncio.run(net.down())
        shutil.rmtree(state, ignore_errors=True)


def test_cli_with_its_own_client_certificate(
    tls_network: tuple[LocalNetwork, Pki], tmp_path: Path
) -> None:
    net, pki = tls_network
    endpoint = net.user_endpoints()[0]
    port = endpoint.rsplit(":", 1)[1]
    key = str(tmp_path / "alice.key")
    base = [
        sys.executable,
        "-m",
        "beco_node.cli.beco_cli",
        "--membership",
        str(net.membership_path),
    ]

    def beco(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, "--key", key, *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, **env},
        )  # fmt: skip

    assert beco("keygen", "--out", key).returncode == 0
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    tls += ["--tls-key", str(pki.client_key)]
    ok = beco("--endpoint", endpoint, *tls, "user", "create", "--first", "Alice")
    assert ok.returncode == 0, ok.stderr
    # without a client certificate the handshake fails: a connection problem, said so
    no_cert = beco("--endpoint", endpoint, "--tls-ca", str(pki.ca), "user", "get")
    assert no_cert.returncode == UNAVAILABLE_EXIT
    assert f"could not connect to {endpoint}" in no_cert.stderr
    assert "--tls-cert" in no_cert.stderr
    # a certificate without its key is a usage error
    half = beco("--endpoint", endpoint, "--tls-cert", str(pki.client_cert), "user", "get")
    assert half.returncode == 2 and "--tls-key" in half.stderr
    # as through a port-forward: an address the certificate does not name...
    forwarded = f"localhost:{port}"
    wrong_name = beco("--endpoint", forwarded, *tls, "user", "get")
    assert wrong_name.returncode == UNAVAILABLE_EXIT
    assert "--tls-server-name" in wrong_name.stderr
    # ...works with the name the certificate holds, from the flag or the environment
    named = beco("--endpoint", forwarded, *tls, "--tls-server-name", "beco.test", "user", "get")
    assert named.returncode == 0 and "Alice" in named.stdout, named.stderr
    by_env = beco(
        "--endpoint", forwarded, "user", "get",
        BECO_TLS_CA=str(pki.ca), BECO_TLS_CERT=str(pki.client_cert),
        BECO_TLS_KEY=str(pki.client_key), BECO_TLS_SERVER_NAME="beco.test",
    )  # fmt: skip
    assert by_env.returncode == 0 and "Alice" in by_env.stdout, by_env.stderr
