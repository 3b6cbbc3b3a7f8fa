"""Certificates and keys of a throw-away control plane.

One self-signed CA signs the API server's serving certificate and the client certificates
(admin in ``system:masters``, and the identities the controller-manager, scheduler and kwok use).
A separate key pair signs and verifies ServiceAccount tokens. EC P-256 keeps generation fast.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class CertificateAuthority:
    """A CA whose files live in ``directory`` (ca.crt, ca.key)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name("beco-test-ca")
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pair = CertPair(
            _write(directory / "ca.crt", self._cert.public_bytes(serialization.Encoding.PEM)),
            _write(directory / "ca.key", _key_pem(self._key), private=True),
        )

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA already written to ``directory`` (to issue more certificates later)."""
        ca = cls.__new__(cls)
        ca.directory = directory
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ca._key = key
        ca._cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        ca.pair = CertPair(directory / "ca.crt", directory / "ca.key")
        return ca

    def issue_in(
        self,
        directory: Path,
        name: str,
        common_name: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> CertPair:
        """``issue`` with the files written to another directory."""
        directory.mkdir(parents=True, exist_ok=True)
        saved, self.directory = self.directory, directory
        try:
            return self.issue(name, common_name, orgs, server=server, dns=dns, ips=ips)
        finally:
            self.directory = saved

    def issue(
        self,
        name: str,
        common_name: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> CertPair:
        """Issue a client (or, with ``server``, serving) certificate as ``<name>.crt/.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, orgs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if dns or ips:
            alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertPair(
            _write(self.directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            _write(self.directory / f"{name}.key", _key_pem(key), private=True),
        )


def service_account_keys(directory: Path) -> CertPair:
    """The ServiceAccount token signing key (``sa.key``) and its public key (``sa.pub``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CertPair(
        cert=_write(directory / "sa.pub", pub),
        key=_write(directory / "sa.key", _key_pem(key), private=True),
    )
