"""Helpers for tests that start single node processes: PKI, membership, health probes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from beco_node import keys, membership
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Pki:
    """A CA, one server certificate shared by the nodes, and a client certificate."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def key(self) -> Path:
        return self.dir / "tls.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def client_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.client_key.read_bytes(), self.client_cert.read_bytes()
        )


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(d: Path, server_names: list[str]) -> Pki:
    """Server SANs: ``server_names`` (DNS) plus 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        name: str, signer: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None, ca: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
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
        if not ca and signer is not None and name == "node":
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(signer or key, hashes.SHA256())

    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = build("beco-test-ca", None, None, True)
    node_key, node = build("node", ca_key, ca.subject, False)
    client_key, client = build("alice", ca_key, ca.subject, False)
    pki = Pki(d)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(node.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(node_key))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    pki.client_key.write_bytes(_pem_key(client_key))
    return pki


def write_network(d: Path, addresses: dict[str, str], quorum: int = 1) -> membership.Membership:
    """Keys and a membership for nodes named by role (``user-*`` are user nodes)."""
    members = []
    for name, address in addresses.items():
        k = keys.generate_private_key()
        (d / f"{name}.key").write_bytes(keys.private_key_to_pem(k))
        role = "user" if name.startswith("user") else name
        members.append(membership.make_member(name, role, "a", address, keys.public_key_bytes(k)))
    ms = membership.build("t", 1, quorum, members)
    (d / "membership.json").write_text(ms.dumps())
    return ms


def start_node(
    d: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    role = "user" if name.startswith("user") else name
    cmd = [sys.executable, "-m", "beco_node.cli.node_main", "--role", role]
    cmd += ["--membership", str(d / "membership.json"), "--key-file", str(d / f"{name}.key")]
    cmd += ["--metrics-listen", "off", "--membership-poll-ms", "200", *args]
    return spawn(cmd, d / f"{name}.log", env)


def spawn(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process of its own session, its stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def health(
    address: str, service: str = "", creds: grpc.ChannelCredentials | None = None
) -> int | str:
    """The health status of ``service``, or the gRPC code name when the check fails."""
    ch = (
        grpc.aio.secure_channel(address, creds)
        if creds is not None
        else grpc.aio.insecure_channel(address)
    )
    async with ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return int(r.status)


async def wait_health(
    address: str,
    want: int,
    service: str = "",
    creds: grpc.ChannelCredentials | None = None,
    limit_s: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + limit_s
    got: int | str = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited with {proc.returncode}")
        got = await health(address, service, creds)
        if got == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{address} {service!r}: health {got}, wanted {want}")
