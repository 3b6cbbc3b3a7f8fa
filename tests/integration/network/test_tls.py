"""TLS on the transport (optional; peer-signed messages are checked either way):
a rendezvous and a validator with mutual TLS, real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import keys, membership, peer
from beco_node.clock import now_ms
from beco_node.local.network import free_base_port

from tests.integration.network.nodes import make_pki


def _start(name: str, d: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "beco_node.cli.node_main", "--role", name]
    args += ["--membership", str(d / "membership.json"), "--key-file", str(d / f"{name}.key")]
    args += ["--tls-cert", str(d / "tls.crt"), "--tls-key", str(d / "tls.key")]
    args += ["--tls-ca", str(d / "ca.pem"), "--metrics-listen", "off"]
    with (d / f"{name}.log").open("wb") as log:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)


async def test_mutual_tls_between_nodes(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, ["localhost"])
    base = free_base_port()
    ks = {}
    members = []
    for i, (name, role) in enumerate(
        [
            ("rendezvous", "rendezvous"),
            ("validator", "validator"),
            ("sst", "sst"),
            ("user-a-0", "user"),
        ]
    ):
        ks[name] = keys.generate_private_key()
        (tmp_path / f"{name}.key").write_bytes(keys.private_key_to_pem(ks[name]))
        members.append(
            membership.make_member(
                name, role, "a", f"127.0.0.1:{base + i}", keys.public_key_bytes(ks[name])
            )
        )
    ms = membership.build("tls", 1, 1, members)
    (tmp_path / "membership.json").write_text(ms.dumps())
    procs = []
    try:
        for name in ("rendezvous", "validator"):
            procs.append(_start(name, tmp_path))
        creds = pki.client_credentials()
        rdv = ms.one("rendezvous").address
        q = peer.seal(
            "discover",
            ppb.DiscoverRequest(role="validator"),
            ks["user-a-0"],
            ms.one("user").peer_id,
            now_ms(),
        )
        found: list[ppb.PeerEnvelope] = []
        async with grpc.aio.secure_channel(rdv, creds) as ch:
            stub = ppb_grpc.RendezvousStub(ch)
            for _ in range(150):  # the validator registers itself over mutual TLS
                try:
                    found = list((await stub.Discover(q, timeout=2)).records)
                except grpc.aio.AioRpcError:
                    found = []
                if found:
                    break
                await asyncio.sleep(0.1)
        assert [e.sender for e in found] == [ms.one("validator").peer_id]
        # plaintext, and TLS without a client certificate, are refused
        async with grpc.aio.insecure_channel(rdv) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ppb_grpc.RendezvousStub(ch).Discover(q, timeout=2)
        no_client_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(rdv, no_client_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ppb_grpc.RendezvousStub(ch).Discover(q, timeout=2)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
