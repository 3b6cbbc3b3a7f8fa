"""The SST reconnects on its own when its PostgreSQL restarts (real processes, real
PostgreSQL): NOT_SERVING while the database is down, writes refused with UNAVAILABLE naming
PostgreSQL, and once PostgreSQL accepts connections again (same port) the next write
commits within a bound, with every acknowledged write still there. The SST process is
never restarted."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from beco_node.client import Client
from beco_node.local.network import LocalNetwork

from tests.integration.network.conftest import Person
from tests.integration.network.nodes import NOT_SERVING, SERVING, health, wait_health

pytestmark = pytest.mark.postgres

# From PostgreSQL accepting connections to the next committed write. The SST retries at most
# 2 s apart; the rest is headroom for a loaded 2-core machine (CI runs here too).
RECONNECT_BOUND_S = 15.0


class OneShot(Client):
    """Sends each write once: the answer the network gives now, not the client's re-sends."""

    async def send_write(self, name: str, request: Any) -> Any:
        return await getattr(self.stub, name)(request, timeout=self.timeout)


def one_shot(network: LocalNetwork, who: Person, node: int) -> OneShot:
    return OneShot(network.user_endpoints()[node], who.key)


async def test_postgres_restart_sst_reconnects_and_writes_resume(network: LocalNetwork) -> None:
    alice = Person()
    sst = network.nodes["sst"]
    assert sst.proc is not None
    sst_pid = sst.proc.pid
    acked: list[tuple[int, str]] = []  # (sequence, last name) of every acknowledged write
    async with alice.client(network) as c:
        r = await c.create_user("Alice")
        acked.append((r.commit.sequence, ""))
        for i in range(3):
            r = await c.set_last(alice.id, f"before{i}")
            acked.append((r.commit.sequence, f"before{i}"))
    assert await health(sst.address) == SERVING
    dsn = network.dsn

    await network.stop_postgres()
    await wait_health(sst.address, NOT_SERVING, limit_s=30)

    # A write now fails, UNAVAILABLE, and says the database is the cause (not the client).
    async with one_shot(network, alice, 1) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.set_last(alice.id, "while-down")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "PostgreSQL" in (err.value.details() or ""), err.value.details()

    await network.start_postgres()  # returns once PostgreSQL accepts connections
    assert network.dsn == dsn, "PostgreSQL came back elsewhere: the test needs the same port"
    back = time.monotonic()
    committed_after: float | None = None
    last_error = ""
    async with one_shot(network, alice, 2) as c:
        while time.monotonic() - back < RECONNECT_BOUND_S + 30:  # measured, then asserted
            try:
                r = await c.set_last(alice.id, "after")
            except grpc.aio.AioRpcError as exc:
                # Until the SST has reconnected: an indeterminate answer, never a refusal.
                indeterminate = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                assert exc.code() in indeterminate, exc.details()
                last_error = exc.details() or ""
                continue
            committed_after = time.monotonic() - back
            acked.append((r.commit.sequence, "after"))
            break
    assert committed_after is not None, f"no write committed after the restart: {last_error}"
    print(f"PostgreSQL accepting -> next write committed: {committed_after:.2f} s")
    print(f"a write while PostgreSQL was down: {err.value.details()}")
    assert committed_after < RECONNECT_BOUND_S, committed_after
    assert await health(sst.address) == SERVING
    assert sst.proc is not None and sst.proc.pid == sst_pid and sst.proc.poll() is None

    async with alice.client(network, 0) as c:
        hist = await c.history(alice.id)
        seqs = [e.sequence for e in hist.entries]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        assert [s for s, _ in acked if s not in seqs] == [], (acked, seqs)
        user = await c.get_user(alice.id)
        assert user.sequence >= acked[-1][0]
        assert list(user.last_name.values) == ["after"]
