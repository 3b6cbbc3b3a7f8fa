"""The plugin's beco session against a real local network (no Kubernetes).

`connect` and `verify-log` are kubectl port-forward + the real beco CLI. Here the
port-forward and the ConfigMap are replaced by a local network's user-node port and
membership file (beco-local's LocalNetwork: real node processes, real PostgreSQL), so what
the plugin does with beco is proven end to end: a command through connect, the saved head
format, a consistent log (exit 0), a forged head and a rolled-back log (exit 5).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from beco_kubectl import args as cli
from beco_kubectl import main as plugin
from beco_node import keys

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]
UNAVAILABLE = 10 + 14  # beco: 10 + gRPC status UNAVAILABLE


class FakeCluster:
    namespace = "local"

    def network(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"transport": {"insecure": True}}}


def _ns(**kw: Any) -> argparse.Namespace:
    base = {"name": "demo", "output": "text", "request_timeout": 10.0, "key": "", "save": ""}
    return argparse.Namespace(**{**base, **kw})


async def test_connect_and_verify_log_through_the_real_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from beco_node.local.network import LocalNetwork, free_base_port

    net = LocalNetwork(tmp_path / "net", base_port=free_base_port())
    net.prepare()
    port = int(net.user_endpoints()[0].rsplit(":", 1)[1])

    @contextmanager
    def files(_c: Any, _n: Any) -> Iterator[tuple[Path, cli.ClientFiles]]:
        d = tmp_path / "session"
        d.mkdir(exist_ok=True)
        yield d, cli.ClientFiles(membership=str(net.membership_path))

    @contextmanager
    def forward(_c: Any, service: str, svc_port: int, _t: float) -> Iterator[int]:
        assert (service, svc_port) == ("demo", 9001)
        yield port

    monkeypatch.setattr(plugin, "client_files", files)
    monkeypatch.setattr(plugin, "port_forward", forward)
    fake: Any = FakeCluster()
    key = tmp_path / "alice.key"
    key.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))
    try:
        await net.up()

        def connect(*beco: str) -> int:
            return plugin.connect(fake, _ns(), ["--key", str(key), *beco])

        for _ in range(50):  # the validator may still be finding the user nodes
            if await asyncio.to_thread(connect, "user", "create", "--first", "Alice") == 0:
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError("no commit through the session")
        h1 = tmp_path / "h1.json"
        assert await asyncio.to_thread(connect, "tree", "head", "--save", str(h1)) == 0
        assert await asyncio.to_thread(connect, "proof", "inclusion") == 0
        assert await asyncio.to_thread(connect, "set", "first", "Alicia") == 0
        capsys.readouterr()

        h2 = tmp_path / "h2.json"
        ns = _ns(old_head=str(h1), save=str(h2))
        assert await asyncio.to_thread(plugin.verify_log, fake, ns) == cli.OK
        assert "extends the saved head of size" in capsys.readouterr().out
        assert cli.parse_head(h2.read_text()).tree_size > cli.parse_head(h1.read_text()).tree_size

        forged = json.loads(h1.read_text())
        forged["root_hash"] = base64.b64encode(b"\0" * 32).decode()
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        with pytest.raises(plugin.Failure) as fork:
            await asyncio.to_thread(
                plugin.verify_log, fake, _ns(old_head=str(tmp_path / "forged.json"))
            )
        assert fork.value.code == cli.FORK and "does not extend" in str(fork.value)

        ahead = json.loads(h2.read_text())
        ahead["tree_size"] = str(int(ahead["tree_size"]) + 100)
        (tmp_path / "ahead.json").write_text(json.dumps(ahead))
        with pytest.raises(plugin.Failure) as rolled:
            await asyncio.to_thread(
                plugin.verify_log, fake, _ns(old_head=str(tmp_path / "ahead.json"))
            )
        assert rolled.value.code == cli.FORK and "rolled back" in str(rolled.value)

        # the network's refusal passes through with beco's code (NOT_FOUND: 10 + 5)
        assert await asyncio.to_thread(connect, "user", "get", "z" * 43) >= 10
    finally:
        await net.down()


def test_connect_over_mutual_tls_with_the_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TLS network (the operator's default): the session passes the CA, the client
    certificate and the server name, as connect does with the network's client-tls Secret."""
    from beco_node.local.network import LocalNetwork, free_base_port

    from tests.integration.network.nodes import SERVING, make_pki, wait_health

    pki = make_pki(tmp_path / "pki", ["beco.test"])
    env = {"BECO_TLS_CERT": str(pki.cert), "BECO_TLS_KEY": str(pki.key), "BECO_TLS_CA": str(pki.ca)}
    net = LocalNetwork(tmp_path / "net", base_port=free_base_port(), extra_env=env)
    net.prepare()
    port = int(net.user_endpoints()[0].rsplit(":", 1)[1])
    session = cli.ClientFiles(
        membership=str(net.membership_path),
        ca=str(pki.ca),
        cert=str(pki.client_cert),
        key=str(pki.client_key),
        server_name="beco.test",
    )

    @contextmanager
    def files(_c: Any, _n: Any) -> Iterator[tuple[Path, cli.ClientFiles]]:
        yield tmp_path, session

    @contextmanager
    def forward(_c: Any, _s: str, _p: int, _t: float) -> Iterator[int]:
        yield port

    monkeypatch.setattr(plugin, "client_files", files)
    monkeypatch.setattr(plugin, "port_forward", forward)
    fake: Any = FakeCluster()
    key = tmp_path / "alice.key"
    key.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))

    async def up() -> None:
        await net.start_postgres()
        creds = pki.client_credentials()
        for name in net.order():
            net.start_node(name)
        for n in net.nodes.values():
            await wait_health(n.address, SERVING, creds=creds, proc=n.proc)

    try:
        asyncio.run(up())
        for _ in range(50):
            rc = plugin.connect(fake, _ns(), ["--key", str(key), "user", "create", "--first", "A"])
            if rc == 0:
                break
            time.sleep(0.3)
        assert rc == 0
        h1 = tmp_path / "h1.json"
        assert (
            plugin.connect(fake, _ns(), ["--key", str(key), "tree", "head", "--save", str(h1)]) == 0
        )
        capsys.readouterr()
        assert plugin.verify_log(fake, _ns(old_head=str(h1))) == cli.OK
        assert "extends the saved head" in capsys.readouterr().out
        # the same session without the client certificate is refused by the network
        no_cert = cli.ClientFiles(membership=session.membership, ca=session.ca)
        monkeypatch.setattr(plugin, "client_files", lambda _c, _n: _yield(tmp_path, no_cert))
        assert plugin.connect(fake, _ns(), ["--key", str(key), "user", "get"]) == UNAVAILABLE
    finally:
        asyncio.run(net.down())


@contextmanager
def _yield(d: Path, f: cli.ClientFiles) -> Iterator[tuple[Path, cli.ClientFiles]]:
    yield d, f
