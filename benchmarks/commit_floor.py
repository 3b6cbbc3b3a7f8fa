"""The floor under "commit p50, 1 in flight": one commit's messages, in the pipeline's
order and between as many processes, on bare grpc.aio with no work at all (no signatures,
no protobuf of ours, no PostgreSQL, no handlers). What a commit costs above this is BECO's
own: its checks, its crypto, its durable commit and the Python around them.

The pattern is a batch of one (docs/architecture.md, the diagram of one batch): client -> origin (a
unary call); origin -> validator; validator -> the 3 user nodes, the origin one of them
(vote requests; the round goes on at 2 answers, the quorum); validator -> SST (the commit;
the SST answers, then sends its notice to the 3 user nodes, which answer it); the
validator's answer to the origin, the origin's to the client. Node-to-node messages travel
on long-lived bidi streams, as the peer links do; every message carries ``PAYLOAD_BYTES``
(a gRPC message costs about the same whatever it carries, up to a few KB).

    python -m benchmarks.commit_floor [--commits 500] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import sys
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import grpc

from benchmarks.grpc_floor import cpu_s  # every thread of the process
from benchmarks.stats import pct

SERVICE = "floor.Commit"
PAYLOAD_BYTES = 300
PAYLOAD = b"x" * PAYLOAD_BYTES
USERS = ("origin", "user2", "user3")
NODES = (*USERS, "validator", "sst")
QUORUM = 2
TABLE = "bench_commit_floor"
START_TIMEOUT_S = 60


class _Node:
    """One process of the pattern: a server, and the streams its role opens."""

    def __init__(self, role: str, db: asyncpg.Connection | None = None) -> None:
        self.role = role
        self.db = db  # the SST's, with a DSN
        self.out: dict[str, Any] = {}  # peer -> the stream this node opened to it
        self.channels: list[grpc.aio.Channel] = []
        self.pending: set[asyncio.Future[Any]] = set()  # reads and notices still running

    async def link(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            if self.role == "validator":
                await self.vote_and_commit()
            elif self.role == "sst":
                if self.db is not None:
                    await self.db.execute(f"INSERT INTO {TABLE} (payload) VALUES ($1)", PAYLOAD)
                notices = asyncio.ensure_future(self.notify())  # after its answer, as the SST's
                self.pending.add(notices)
                notices.add_done_callback(self.pending.discard)
            yield PAYLOAD

    async def vote_and_commit(self) -> None:
        if self.pending:  # the last round's unneeded vote
            await asyncio.gather(*self.pending)
        voters = [self.out[u] for u in USERS]
        for s in voters:
            await s.write(PAYLOAD)
        reads = [asyncio.ensure_future(s.read()) for s in voters]
        for n, got in enumerate(asyncio.as_completed(reads), 1):
            await got
            if n == QUORUM:
                break
        self.pending.update(r for r in reads if not r.done())
        sst = self.out["sst"]
        await sst.write(PAYLOAD)
        await sst.read()

    async def notify(self) -> None:
        async def one(s: Any) -> None:
            await s.write(PAYLOAD)
            await s.read()

        await asyncio.gather(*(one(self.out[u]) for u in USERS))

    async def write(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        validator = self.out["validator"]  # the origin: the client's call
        await validator.write(PAYLOAD)
        reply: bytes = await validator.read()
        return reply

    def open(self, peer: str, address: str) -> None:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        self.out[peer] = channel.stream_stream(f"/{SERVICE}/Link", None, None)(None)

    async def close(self) -> None:
        """End the streams this node opened (their servers' handlers return)."""
        for s in self.out.values():
            await s.done_writing()
        for channel in self.channels:
            await channel.close(None)

    def opens(self) -> tuple[str, ...]:
        return {"validator": (*USERS, "sst"), "sst": USERS, "origin": ("validator",)}.get(
            self.role, ()
        )


async def _serve(role: str, dsn: str | None, conn: Connection) -> None:
    db = None
    if role == "sst" and dsn:
        db = await asyncpg.connect(dsn)
        await db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial, payload bytea)")
    node = _Node(role, db)
    server = grpc.aio.server()
    handlers = {
        "Link": grpc.stream_stream_rpc_method_handler(node.link),
        "Write": grpc.unary_unary_rpc_method_handler(node.write),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    conn.send(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    ports: dict[str, int] = await asyncio.to_thread(conn.recv)
    for peer in node.opens():
        node.open(peer, f"127.0.0.1:{ports[peer]}")
    conn.send("ready")
    while (cmd := await asyncio.to_thread(conn.recv)) == "cpu":
        conn.send(cpu_s())
    if cmd == "close":  # every node ends its streams before any server stops
        await node.close()
        conn.send("closed")
        await asyncio.to_thread(conn.recv)
    await server.stop(1)
    if db is not None:
        await db.execute(f"DROP TABLE {TABLE}")
        await db.close()


def _node_main(role: str, dsn: str | None, conn: Connection) -> None:
    asyncio.run(_serve(role, dsn, conn))


async def _client(port: int, commits: int, conns: dict[str, Connection]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        write = ch.unary_unary(f"/{SERVICE}/Write", None, None)
        for _ in range(100):  # warm-up: every stream open, every code path run once
            await write(PAYLOAD)

        def cpu() -> dict[str, float]:
            for c in conns.values():
                c.send("cpu")
            return {role: c.recv() for role, c in conns.items()}

        lat: list[float] = []
        cpu0, client0 = cpu(), cpu_s()
        for _ in range(commits):
            t0 = time.perf_counter()
            await write(PAYLOAD)
            lat.append(time.perf_counter() - t0)
        cpu1, client1 = cpu(), cpu_s()
    per = {role: (cpu1[role] - cpu0[role]) * 1000 / commits for role in NODES}
    return {
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "mean_ms": sum(lat) / len(lat) * 1000,
        "server_cpu_ms": sum(per.values()),
        "cpu_ms": {
            "user": sum(per[u] for u in USERS),
            "validator": per["validator"],
            "sst": per["sst"],
        },
        "client_cpu_ms": (client1 - client0) * 1000 / commits,
    }


def _recv(conn: Connection, role: str, what: str) -> Any:
    if not conn.poll(START_TIMEOUT_S):
        raise RuntimeError(f"the floor's {role} node sent no {what} in {START_TIMEOUT_S} s")
    return conn.recv()


def measure(commits: int = 500, dsn: str | None = None) -> dict[str, Any]:
    """Start the five node processes, time ``commits`` commits one at a time, stop them.
    ``dsn``: the SST commits each one durably in that PostgreSQL."""
    ctx = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    procs = []
    for role in NODES:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_node_main, args=(role, dsn, child), daemon=True)
        p.start()
        conns[role] = parent
        procs.append(p)
    try:
        ports = {role: _recv(c, role, "port") for role, c in conns.items()}
        for c in conns.values():
            c.send(ports)
        for role, c in conns.items():
            _recv(c, role, "ready")
        return asyncio.run(_client(ports["origin"], commits, conns))
    finally:
        for cmd in ("close", "stop"):
            for c in conns.values():
                with contextlib.suppress(OSError):
                    c.send(cmd)
            for c in conns.values():
                with contextlib.suppress(OSError, EOFError):
                    if cmd == "close" and c.poll(10):
                        c.recv()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=500)
    p.add_argument("--dsn", help="PostgreSQL for a durable commit per commit at the SST")
    ns = p.parse_args(argv)
    print(json.dumps(measure(ns.commits, ns.dsn), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
