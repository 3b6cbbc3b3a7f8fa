"""One real local network per test module: PostgreSQL, SST, rendezvous, validator
and three user nodes (zones a, b, c; quorum 2) as separate processes on loopback."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from beco_node import keys
from beco_node.client import Client
from beco_node.local.network import LocalNetwork, free_base_port


@pytest.fixture(scope="module")
def network() -> Iterator[LocalNetwork]:
    # Not under pytest's basetemp: PostgreSQL runs as another user and needs to traverse
    # the path, and any concurrent pytest session resets /tmp/pytest-of-<user> to 0700.
    state = Path(tempfile.mkdtemp(prefix="beco-net-"))
    net = LocalNetwork(
        state,
        base_port=free_base_port(),
        # short vote deadline so below-quorum tests fail fast
        extra_env={"BECO_VOTE_TIMEOUT_MS": "3000", "BECO_LOG_LEVEL": "INFO"},
    )
    try:
        asyncio.run(net.up())
    except BaseException:
        asyncio.run(net.down())
        raise
    yield net
    asyncio.run(net.down())
    shutil.rmtree(state, ignore_errors=True)


class Person:
    def __init__(self) -> None:
        self.key = keys.generate_private_key()
        self.id = keys.peer_id(keys.public_key_bytes(self.key))

    def client(self, net: LocalNetwork, node: int = 0) -> Client:
        return Client(net.user_endpoints()[node], self.key)


async def wait_for_sequence(net: LocalNetwork, node: int, who: Person, uid: str, seq: int) -> None:
    async with who.client(net, node) as c:
        for _ in range(100):
            if (await c.get_user(uid)).sequence >= seq:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"node {node} never reached sequence {seq} of {uid}")
