"""A local BECO network: keys, membership, PostgreSQL and the node processes.

Layout of the state directory (kept across runs, so a restart keeps every
committed change)::

    membership.json        generated once; edit it and the nodes reload it
    keys/<name>.key        each node's Ed25519 key (PEM), generated once
    pg/                    the embedded PostgreSQL (unless --database-url)
    logs/<name>.log        each node's JSON log
    local.pid              the pid of the running ``beco-local up``

Ports: user nodes from ``base_port`` (9001, 9002, ...), then rendezvous,
validator and SST at ``base_port + 200 + 0/1/2``; metrics at ``base_port + 300 + i``.
Nodes talk plaintext gRPC (``--insecure``): this is a development network on
loopback; every node-to-node message is still signed by its sender's peer key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from beco_node import keys, membership
from beco_node.quorum import default_quorum

if TYPE_CHECKING:
    from beco_node.pg import EmbeddedPostgres

USER_PORT_OFFSET = 0
SINGLETON_PORT_OFFSET = 200  # rendezvous, validator, sst
METRICS_PORT_OFFSET = 300


def ports_of(base_port: int, n_users: int) -> list[int]:
    """Every port a network with ``n_users`` user nodes derives from ``base_port``."""
    n_members = n_users + 3
    return [
        *range(base_port + USER_PORT_OFFSET, base_port + USER_PORT_OFFSET + n_users),
        *range(base_port + SINGLETON_PORT_OFFSET, base_port + SINGLETON_PORT_OFFSET + 3),
        *range(base_port + METRICS_PORT_OFFSET, base_port + METRICS_PORT_OFFSET + n_members),
    ]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(n_users: int = 3, tries: int = 200) -> int:
    """A random base port whose whole derived range is free now (tests, benchmarks)."""
    for _ in range(tries):
        base = random.randrange(20_000, 40_000)
        if all(_free(p) for p in ports_of(base, n_users)):
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


@dataclass
class NodeProc:
    name: str
    role: str
    address: str
    metrics_port: int
    key_file: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class LocalNetwork:
    state_dir: Path
    zones: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    nodes_per_zone: int = 1
    base_port: int = 9001
    database_url: str | None = None
    quorum: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, NodeProc] = field(default_factory=dict)
    _pg: EmbeddedPostgres | None = None
    dsn: str = ""

    @property
    def membership_path(self) -> Path:
        return self.state_dir / "membership.json"

    def prepare(self) -> membership.Membership:
        """Generate keys and membership once; afterwards reuse them."""
        (self.state_dir / "keys").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.membership_path.exists():
            ms = membership.loads(self.membership_path.read_text())
        else:
            plan: list[tuple[str, str, str, int]] = []
            port = self.base_port + USER_PORT_OFFSET
            for zone in self.zones:
                for i in range(self.nodes_per_zone):
                    plan.append((f"user-{zone}-{i}", "user", zone, port))
                    port += 1
            z0 = self.zones[0]
            single = self.base_port + SINGLETON_PORT_OFFSET
            plan.append(("rendezvous", "rendezvous", z0, single))
            plan.append(("validator", "validator", z0, single + 1))
            plan.append(("sst", "sst", z0, single + 2))
            members = []
            for name, role, zone, p in plan:
                kf = self.state_dir / "keys" / f"{name}.key"
                if not kf.exists():
                    kf.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))
                    kf.chmod(0o600)
                pub = keys.public_key_bytes(keys.private_key_from_pem(kf.read_bytes()))
                members.append(membership.make_member(name, role, zone, f"127.0.0.1:{p}", pub))
            n_users = len(self.zones) * self.nodes_per_zone
            q = self.quorum or default_quorum(n_users)
            ms = membership.build("local", 1, q, members)
            tmp = self.membership_path.with_suffix(".tmp")
            tmp.write_text(ms.dumps())
            tmp.replace(self.membership_path)
        for i, m in enumerate(ms.members):
            self.nodes[m.name] = NodeProc(
                m.name,
                m.role,
                m.address,
                self.base_port + METRICS_PORT_OFFSET + i,
                self.state_dir / "keys" / f"{m.name}.key",
            )
        return ms

    async def start_postgres(self) -> str:
        if self.database_url:
            self.dsn = self.database_url
            return self.dsn
        from beco_node.pg import EmbeddedPostgres

        pg = EmbeddedPostgres(self.state_dir / "pg")
        self.dsn = await pg.start()
        self._pg = pg
        return self.dsn

    async def stop_postgres(self) -> None:
        if self._pg is not None:
            await self._pg.stop()

    @property
    def postgres(self) -> EmbeddedPostgres | None:
        """The embedded PostgreSQL (None with ``database_url``)."""
        return self._pg

    async def restart_dead(self) -> list[str]:
        """Restart the embedded PostgreSQL and every started node that has exited; return
        what was restarted. Raises PostgresError when PostgreSQL cannot start (yet)."""
        restarted: list[str] = []
        pg = self._pg
        if pg is not None and not pg.running:
            old = self.dsn
            self.dsn = await pg.start()
            restarted.append("postgres")
            if self.dsn != old:  # another port: the SST must connect to the new one
                for n in self.nodes.values():
                    if n.role == "sst" and n.proc is not None:
                        self.stop_node(n.name)
                        self.start_node(n.name)
                        restarted.append(n.name)
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is not None:
                self.start_node(n.name)
                restarted.append(n.name)
        return restarted

    def start_node(self, name: str) -> None:
        n = self.nodes[name]
        if n.proc is not None and n.proc.poll() is None:
            return
        args = [
            sys.executable,
            "-m",
            "beco_node.cli.node_main",
            "--role",
            n.role,
            "--membership",
            str(self.membership_path),
            "--key-file",
            str(n.key_file),
            "--metrics-listen",
            f"127.0.0.1:{n.metrics_port}",
            "--insecure",
        ]
        env = {**os.environ, **self.extra_env}
        if n.role == "sst":
            env["BECO_DATABASE_URL"] = self.dsn
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")
        n.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()

    def stop_node(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        n = self.nodes[name]
        if n.proc is None:
            return
        if n.proc.poll() is None:
            n.proc.send_signal(sig)
            try:
                n.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        n.proc = None

    async def wait_healthy(self, names: list[str] | None = None, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        for name in names or list(self.nodes):
            n = self.nodes[name]
            async with grpc.aio.insecure_channel(n.address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while True:
                    if n.proc is not None and n.proc.poll() is not None:
                        raise RuntimeError(
                            f"node {name} exited with {n.proc.returncode}; "
                            f"see {self.state_dir / 'logs' / (name + '.log')}"
                        )
                    try:
                        r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if r.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"node {name} not healthy after {limit_s} s")
                    await asyncio.sleep(0.1)

    def order(self) -> list[str]:
        roles = ["sst", "rendezvous", "validator", "user"]
        return sorted(self.nodes, key=lambda n: (roles.index(self.nodes[n].role), n))

    async def up(self) -> None:
        self.prepare()
        await self.start_postgres()
        sst = [n for n in self.nodes if self.nodes[n].role == "sst"]
        for name in sst:
            self.start_node(name)
        await self.wait_healthy(sst)
        for name in self.order():
            self.start_node(name)
        await self.wait_healthy()

    async def down(self) -> None:
        for name in reversed(self.order()):
            self.stop_node(name)
        await self.stop_postgres()

    def user_endpoints(self) -> list[str]:
        return [n.address for n in self.nodes.values() if n.role == "user"]

    def write_pid(self) -> None:
        (self.state_dir / "local.pid").write_text(json.dumps({"pid": os.getpid()}))

    def clear_pid(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "local.pid").unlink()
