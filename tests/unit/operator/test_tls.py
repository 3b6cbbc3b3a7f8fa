from __future__ import annotations

from beco_operator import keyring, names, render, tls
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import NOW, make_spec


def test_member_certificates_chain_to_the_network_ca_and_name_the_member() -> None:
    ca_pem, ca_key = tls.make_ca("demo", "ns", NOW)
    slot = keyring.desired_slots("demo", "ns", make_spec())[3]
    cert_pem, _key = tls.issue(
        ca_pem, ca_key, slot.name, tls.dns_names(slot.host, slot.service("demo"), "ns"), NOW
    )
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "demo-user-a-0.demo-user-a.ns.svc" in sans
    assert "demo.ns.svc" in sans  # the client Service


def test_key_secret_carries_the_tls_pair_and_pods_use_it() -> None:
    ca_pem, ca_key = tls.make_ca("demo", "ns", NOW)
    slot = keyring.desired_slots("demo", "ns", make_spec())[1]
    pair = tls.issue(ca_pem, ca_key, slot.name, [slot.host], NOW)
    sec = keyring.key_secret("demo", "ns", slot, "v", "", NOW, tls_pair=pair)
    assert {names.NODE_KEY, names.TLS_CERT_KEY, names.TLS_KEY_KEY} <= set(sec["data"])
    assert "--insecure" not in render.node_args("user", make_spec())
    assert "--insecure" in render.node_args("user", make_spec(transport={"insecure": True}))
