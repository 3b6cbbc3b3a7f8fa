"""Readiness on a real network: a user node is SERVING only once it has loaded the users,
a node removed from the membership stops serving the network's data and reloads when
re-added, and the CLI tells a status the network returned from a failed connection."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from beco_node import keys
from beco_node.client import Client
from beco_node.local.network import LocalNetwork
from beco_node.membership import build, loads, make_member
from beco_node.pg.embedded import free_port

from tests.integration.network.nodes import NOT_SERVING, SERVING, health, spawn, stop, wait_health

from .conftest import Person

pytestmark = pytest.mark.postgres
NEVER_AWAITED = "was never awaited"


async def refused(coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await coro  # type: ignore[misc]
    return ei.value


async def create_eventually(network: LocalNetwork, who: Person, first: str) -> None:
    """Create a user through node 0, retrying while a membership change propagates."""
    for _ in range(100):
        try:
            async with who.client(network, 0) as c:
                await c.create_user(first)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return  # an earlier attempt committed
            await asyncio.sleep(0.1)
    raise AssertionError(f"could not create {first}")


def beco(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "beco_node.cli.beco_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


async def test_a_restarted_user_node_serves_only_once_loaded(
    network: LocalNetwork, tmp_path: Path
) -> None:
    alice = Person()
    async with alice.client(network, 0) as a:
        await a.create_user("Alice")
    node = network.nodes["user-a-0"]
    network.stop_node("sst")
    try:
        network.stop_node("user-a-0")
        network.start_node("user-a-0")
        await wait_health(node.address, SERVING, "liveness", proc=node.proc)
        # the SST is down: it cannot load, so it says so instead of answering 0 users
        for _ in range(10):
            assert await health(node.address) == NOT_SERVING
            await asyncio.sleep(0.1)
        async with alice.client(network, 0) as a:
            err = await refused(a.list_users())
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading the users" in (err.details() or "")
        # the CLI says the node answered, and what; not that it could not connect
        key = tmp_path / "alice.key"
        key.write_bytes(keys.private_key_to_pem(alice.key))
        out = beco("--endpoint", node.address, "--key", str(key), "user", "list")
        assert out.returncode == 10 + grpc.StatusCode.UNAVAILABLE.value[0], out.stderr
        assert f"{node.address} answered UNAVAILABLE" in out.stderr
        assert "loading the users" in out.stderr and "could not connect" not in out.stderr
        closed = f"127.0.0.1:{free_port()}"
        out = beco("--endpoint", closed, "--key", str(key), "user", "list")
        assert out.returncode == 10 + grpc.StatusCode.UNAVAILABLE.value[0], out.stderr
        assert f"could not connect to {closed}" in out.stderr and "--tls-ca" in out.stderr
    finally:
        network.start_node("sst")
    await network.wait_healthy(["sst", "user-a-0"])
    async with alice.client(network, 0) as a:  # loaded by the time it reports SERVING
        assert [u.user_id for u in (await a.list_users()).users] == [alice.id]


async def test_a_removed_user_node_stops_serving_and_reloads_when_readded(
    network: LocalNetwork,
) -> None:
    path = network.membership_path
    original = path.read_text()
    ms = loads(original)
    removed = network.nodes["user-c-0"]
    bob = Person()
    try:
        members = [m for m in ms.members if m.name != "user-c-0"]
        path.write_text(build(ms.network, ms.generation + 1, 2, members).dumps())
        await wait_health(removed.address, NOT_SERVING, limit_s=30)
        async with bob.client(network, 2) as c:
            err = await refused(c.get_user(bob.id))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "not a user of network" in (err.details() or "")
        # meanwhile the others commit; the removed node is not told
        await network.wait_healthy(["validator", "sst"])
        await create_eventually(network, bob, "Bob")
    finally:
        path.write_text(original)
    await wait_health(removed.address, SERVING, limit_s=30)
    async with bob.client(network, 2) as c:  # reloaded before SERVING: it lists Bob
        assert [u.user_id for u in (await c.list_users()).users] == [bob.id]


async def test_a_new_user_node_waits_to_be_added(network: LocalNetwork, tmp_path: Path) -> None:
    """A pod may start before the membership that lists it reaches it: it must wait,
    NOT_SERVING, instead of crash-looping, then load and serve once added."""
    carol = Person()
    await create_eventually(network, carol, "Carol")
    key = keys.generate_private_key()
    (tmp_path / "new.key").write_bytes(keys.private_key_to_pem(key))
    address = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "beco_node.cli.node_main", "--role", "user", "--insecure"]
    cmd += ["--membership", str(network.membership_path), "--key-file", str(tmp_path / "new.key")]
    cmd += ["--listen", address, "--metrics-listen", "off", "--membership-poll-ms", "200"]
    path = network.membership_path
    original = path.read_text()
    proc = spawn(cmd, tmp_path / "new.log")
    try:
        await wait_health(address, SERVING, "liveness", proc=proc)
        assert await health(address) == NOT_SERVING
        async with Client(address, carol.key) as c:
            err = await refused(c.get_user(carol.id))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "not a user of network" in (err.details() or "")
        ms = loads(original)
        new = make_member("user-d-0", "user", "a", address, keys.public_key_bytes(key))
        path.write_text(build(ms.network, ms.generation + 1, 3, [*ms.members, new]).dumps())
        await wait_health(address, SERVING, proc=proc, limit_s=30)
        async with Client(address, carol.key) as c:
            assert [u.user_id for u in (await c.list_users()).users] == [carol.id]
    finally:
        path.write_text(original)
        stop([proc])
    assert NEVER_AWAITED not in (tmp_path / "new.log").read_text()
