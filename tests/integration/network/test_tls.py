"""TLS on the transport (optional; peer-signed messages are checked either way):
a rendezvous and a validator with mutual TLS, real processes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(
    name: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None, ca: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, b.sign(issuer_key or key, hashes.SHA256())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _start(name: str, d: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "beco_node.cli.node_main", "--role", name]
    args += ["--membership", str(d / "membership.json"), "--key-file", str(d / f"{name}.key")]
    args += ["--tls-cert", str(d / "tls.crt"), "--tls-key", str(d / "tls.key")]
    args += ["--tls-ca", str(d / "ca.pem"), "--metrics-listen", "off"]
    with (d / f"{name}.log").open("wb") as log:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)


async def test_mutual_tls_between_nodes(tmp_path: Path) -> None:
    ca_key, ca = _cert("beco-test-ca", None, None, True)
    node_key, node_cert = _cert("node", ca_key, ca.subject, False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.crt").write_bytes(node_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(_pem_key(node_key))
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
        creds = grpc.ssl_channel_credentials(
            ca.public_bytes(serialization.Encoding.PEM),
            _pem_key(node_key),
            node_cert.public_bytes(serialization.Encoding.PEM),
        )
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
        no_client_cert = grpc.ssl_channel_credentials(ca.public_bytes(serialization.Encoding.PEM))
        async with grpc.aio.secure_channel(rdv, no_client_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ppb_grpc.RendezvousStub(ch).Discover(q, timeout=2)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
