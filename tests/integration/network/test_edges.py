"""The network's edges on real processes: malformed bytes, PRECIS names, paging, and
beco-local restarting a PostgreSQL killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import unicodedata
import urllib.request
from pathlib import Path

import grpc
import pytest
from beco_node.local.network import LocalNetwork

from .conftest import Person

pytestmark = pytest.mark.postgres


def _metrics_text(net: LocalNetwork, node: str) -> str:
    url = f"http://127.0.0.1:{net.nodes[node].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text: str = r.read().decode()
    return text


def _metric(net: LocalNetwork, node: str, line_prefix: str) -> float:
    for line in _metrics_text(net, node).splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _raw_call(net: LocalNetwork, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(net.user_endpoints()[0]) as ch:
        call = ch.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(payload, timeout=10)
    return err.value


async def test_malformed_bytes_are_invalid_argument_counted_and_logged_once(
    network: LocalNetwork,
) -> None:
    node = "user-a-0"
    counter = 'beco_rpc_requests_total{code="INVALID_ARGUMENT",method="GetUser"}'
    before = await asyncio.to_thread(_metric, network, node, counter)
    garbage = await _raw_call(network, "/beco.v1.Identity/GetUser", b"\xff\xff\xff\xff")
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage.details()
    assert "malformed request" in (garbage.details() or "")
    assert "beco-origin" in garbage.trailing_metadata()  # the node answered, not the transport
    # user_id (field 2, a string) holding invalid UTF-8
    bad_utf8 = await _raw_call(network, "/beco.v1.Identity/GetUser", b"\x12\x02\xff\xfe")
    assert bad_utf8.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_utf8.details()
    # a peer service too (no signature needed to send bytes)
    peer_call = await _raw_call(network, "/beco.v1.UserNode/VoteBatch", b"\x0a\xff")
    assert peer_call.code() == grpc.StatusCode.INVALID_ARGUMENT, peer_call.details()
    after = await asyncio.to_thread(_metric, network, node, counter)
    assert after - before == 2
    await asyncio.sleep(0.2)
    lines = [
        json.loads(x)
        for x in (network.state_dir / "logs" / f"{node}.log").read_text().splitlines()
        if x.startswith("{")
    ]
    malformed = [x for x in lines if "malformed request" in x["msg"]]
    assert len(malformed) >= 3 and all(x["level"] == "warning" for x in malformed)
    assert not any("exc" in x or "deserializ" in x["msg"].lower() for x in lines)


async def test_names_go_through_precis_end_to_end(network: LocalNetwork) -> None:
    mallory = Person()
    async with mallory.client(network) as c:
        for bad, cp in (("\u200b", "U+200B"), ("Ali\u202ece", "U+202E"), ("A\ue000", "U+E000")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.create_user(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert cp in (err.value.details() or "") and "PRECIS" in (err.value.details() or "")
        # The client signs the canonical form: NFD and NFC name the same person.
        r = await c.create_user(unicodedata.normalize("NFD", "Mária"), ["  Anne  "])
        assert list(r.user.first_name.values) == ["Mária"]
        assert list(r.user.middle_names.values) == ["Anne"]


async def test_history_pages(network: LocalNetwork) -> None:
    alice = Person()
    async with alice.client(network) as c:
        await c.create_user("Alice")
        for i in range(4):
            await c.set_first(alice.id, f"Alice {i}")
        page = await c.history_page(alice.id, page_size=2)
        assert [e.sequence for e in page.entries] == [1, 2] and page.next_page_token
        page = await c.history_page(alice.id, 2, page.next_page_token)
        assert [e.sequence for e in page.entries] == [3, 4]
        whole = await c.history(alice.id, page_size=2)
        assert [e.sequence for e in whole.entries] == [1, 2, 3, 4, 5]
        # every node measures its peers' clocks from their signed messages
        offset = 'beco_peer_clock_offset_seconds{peer="validator"}'
        assert abs(await asyncio.to_thread(_metric, network, "user-b-0", offset)) < 5
        text = await asyncio.to_thread(_metrics_text, network, "user-b-0")
        assert offset in text
        for size, token in ((5000, ""), (2, "not-a-token")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.history_page(alice.id, size, token)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_validator_with_a_skewed_clock_is_named_not_the_client(
    network: LocalNetwork,
) -> None:
    alice = Person()
    async with alice.client(network) as c:
        await c.create_user("Alice")
    skewed = Path(__file__).parent / "skewed_clock"
    saved = dict(network.extra_env)
    network.stop_node("validator")
    try:
        network.extra_env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(skewed), os.environ.get("PYTHONPATH", "")]),
                "BECO_TEST_SKEW_MS": "35000",  # beyond --skew-ms (30 s), within the peer 60 s
            }
        )
        network.start_node("validator")
        network.extra_env = saved
        await network.wait_healthy(["validator"])
        async with alice.client(network) as c:
            deadline = time.monotonic() + 30
            while True:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await c.set_first(alice.id, "Alicia")
                if "validator clock skew" in (err.value.details() or ""):
                    break
                # the user node may still be reconnecting to the restarted validator
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert time.monotonic() < deadline, err.value.details()
                await asyncio.sleep(0.3)
            # a definitive failure (recorded, it can never commit later), so not UNAVAILABLE,
            # which means "outcome unknown" (docs/reliability.md); the message names the clock
            assert err.value.code() == grpc.StatusCode.ABORTED
        # and every voter's gauge says whose clock it is
        offset = 'beco_peer_clock_offset_seconds{peer="validator"}'
        assert 30 < await asyncio.to_thread(_metric, network, "user-a-0", offset) < 40
    finally:
        network.extra_env = saved
        network.stop_node("validator")
        network.start_node("validator")
        await network.wait_healthy(["validator"])


async def test_a_postgres_killed_with_sigkill_is_restarted_and_writes_resume(
    network: LocalNetwork,
) -> None:
    pg = network.postgres
    assert pg is not None and pg.pid is not None
    os.kill(pg.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pg.running:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    restarted = await network.restart_dead()
    assert "postgres" in restarted and pg.running
    bob = Person()
    async with bob.client(network) as c:
        deadline = time.monotonic() + 60
        while True:  # the SST reconnects (or is restarted) on its own
            try:
                r = await c.create_user("Bob")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                assert time.monotonic() < deadline, exc.details()
                await network.restart_dead()
                await asyncio.sleep(0.5)
        assert r.commit.sequence == 1
