"""Node settings: every setting is a flag and an environment variable.

The environment variable of ``--foo-bar`` is ``BECO_FOO_BAR``; a flag wins over
the variable, the variable over the default. ``--help`` lists them all with
their defaults.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from beco_node.auth import DEFAULT_SKEW_MS
from beco_node.limits import MAX_MESSAGE_BYTES
from beco_node.session import DEFAULT_MAX_SESSIONS, DEFAULT_TTL_MS

ROLES = ("rendezvous", "validator", "user", "sst")
# The grpc.health.v1 service a liveness probe asks for ("" is readiness); the operator's
# probes name it too.
LIVENESS_SERVICE = "liveness"
# User nodes: the staleness bound (docs/reliability.md) and the catch-up period within it.
DEFAULT_STALENESS_BOUND_MS = 5_000
DEFAULT_SYNC_INTERVAL_MS = 1_000


@dataclass(frozen=True)
class Settings:
    role: str
    membership: str
    key_file: str
    listen: str
    advertise: str
    health_listen: str
    metrics_listen: str
    insecure: bool
    tls_cert: str
    tls_key: str
    tls_ca: str
    database_url: str
    skew_ms: int
    vote_timeout_ms: int
    peer_ttl_ms: int
    membership_poll_ms: int
    log_level: str
    max_message_bytes: int
    staleness_bound_ms: int
    sync_interval_ms: int
    session_ttl_ms: int
    max_sessions: int
    peer_links: str


_SPEC: list[tuple[str, str, object, str]] = [
    # (flag, type, default, help)
    ("role", "str", "", "rendezvous | validator | user | sst (required)"),
    ("membership", "str", "membership.json", "the membership file (reloaded when it changes)"),
    ("key-file", "str", "node.key", "this node's Ed25519 private key (PEM, PKCS#8)"),
    ("listen", "str", "", "host:port to serve gRPC on (default: this node's membership address)"),
    (
        "advertise",
        "str",
        "",
        "host:port registered with the rendezvous (default: this node's membership address;"
        " never a wildcard)",
    ),
    (
        "health-listen",
        "str",
        "off",
        "host:port of a plaintext gRPC server with grpc.health.v1 only, for probes ('off': none)",
    ),
    (
        "metrics-listen",
        "str",
        "127.0.0.1:0",
        "host:port for Prometheus /metrics (port 0: any free port, 'off': none)",
    ),
    ("insecure", "bool", False, "allow plaintext gRPC (local development only)"),
    ("tls-cert", "str", "", "PEM certificate for the gRPC transport"),
    ("tls-key", "str", "", "PEM private key for --tls-cert"),
    ("tls-ca", "str", "", "PEM CA bundle: verify peers (and require client certificates)"),
    ("database-url", "str", "", "PostgreSQL DSN (sst only)"),
    ("skew-ms", "int", DEFAULT_SKEW_MS, "allowed client clock skew for signed requests"),
    ("vote-timeout-ms", "int", 5_000, "validator: deadline for a proposal's votes"),
    ("peer-ttl-ms", "int", 30_000, "rendezvous: lifetime of a peer record"),
    ("membership-poll-ms", "int", 1_000, "how often to check the membership file for changes"),
    ("log-level", "str", "INFO", "DEBUG | INFO | WARNING | ERROR"),
    (
        "max-message-bytes",
        "int",
        MAX_MESSAGE_BYTES,
        "largest gRPC message accepted on the public API",
    ),
    (
        "staleness-bound-ms",
        "int",
        DEFAULT_STALENESS_BOUND_MS,
        "user node: answer from memory only while its last catch-up with the SST was asked"
        " for at most this long ago (else read the SST)",
    ),
    (
        "sync-interval-ms",
        "int",
        DEFAULT_SYNC_INTERVAL_MS,
        "user node: how often to catch up with the SST's log (below --staleness-bound-ms)",
    ),
    (
        "session-ttl-ms",
        "int",
        DEFAULT_TTL_MS,
        "user node: lifetime of a read session (OpenSession); then the client opens another",
    ),
    (
        "max-sessions",
        "int",
        DEFAULT_MAX_SESSIONS,
        "user node: read sessions kept open (beyond, the least recently used is dropped)",
    ),
    (
        "peer-links",
        "str",
        "on",
        "on: node-to-node calls travel over one long-lived stream per peer (unary while it"
        " is not up, or when the peer has none); off: a unary call each, and no links served",
    ),
]


def is_wildcard(address: str) -> bool:
    """True for a host:port whose host is empty or unspecified (0.0.0.0, ::): not reachable."""
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.strip("[]")
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a DNS name


def _env_name(flag: str) -> str:
    return "BECO_" + flag.upper().replace("-", "_")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="beco-node",
        description="A BECO node. Each flag can also be set by the environment variable "
        "shown in brackets.",
    )
    for flag, typ, default, help_ in _SPEC:
        env = _env_name(flag)
        raw = os.environ.get(env)
        if typ == "bool":
            value: object = raw.lower() in ("1", "true", "yes") if raw is not None else default
            p.add_argument(f"--{flag}", action="store_true", default=value, help=f"{help_} [{env}]")
        else:
            value = raw if raw is not None else default
            p.add_argument(
                f"--{flag}",
                type=int if typ == "int" else str,
                default=int(value) if typ == "int" else value,  # type: ignore[call-overload]
                help=f"{help_} [{env}, default {default!r}]",
            )
    return p


def parse(argv: Sequence[str] | None = None) -> Settings:
    p = parser()
    ns = p.parse_args(argv)
    if ns.role not in ROLES:
        p.error(f"--role must be one of {', '.join(ROLES)} (got {ns.role!r})")
    if not ns.insecure and not (ns.tls_cert and ns.tls_key):
        p.error("refusing plaintext gRPC: pass --tls-cert/--tls-key, or --insecure for local use")
    if ns.role == "sst" and not ns.database_url:
        p.error("the sst needs --database-url (BECO_DATABASE_URL)")
    if not 0 < ns.sync_interval_ms < ns.staleness_bound_ms:
        p.error(
            f"--sync-interval-ms ({ns.sync_interval_ms}) must be positive and below"
            f" --staleness-bound-ms ({ns.staleness_bound_ms}): a node that catches up less"
            " often than the bound would read every user from the SST"
        )
    if ns.peer_links not in ("on", "off"):
        p.error(f"--peer-links must be on or off (got {ns.peer_links!r})")
    if ns.session_ttl_ms <= 0 or ns.max_sessions <= 0:
        p.error("--session-ttl-ms and --max-sessions must be positive")
    if ns.advertise and is_wildcard(ns.advertise):
        p.error(
            f"--advertise {ns.advertise!r} is a wildcard address other nodes cannot reach:"
            " pass this node's own host:port (or leave it unset to use the membership's)"
        )
    return Settings(**{k.replace("-", "_"): v for k, v in vars(ns).items()})
