"""Start-up and readiness of single node processes: the plaintext health port beside
mutual TLS, the SST waiting for PostgreSQL, the advertised address, a clean crash path."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import grpc
import pytest
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import keys, peer
from beco_node.clock import now_ms
from beco_node.pg.embedded import EmbeddedPostgres, free_port

from tests.integration.network.nodes import (
    NOT_SERVING,
    SERVING,
    health,
    make_pki,
    start_node,
    stop,
    wait_health,
    write_network,
)

NEVER_AWAITED = "was never awaited"


def _addresses(*names: str, host: str = "127.0.0.1") -> dict[str, str]:
    return {n: f"{host}:{free_port()}" for n in names}


async def test_health_listen_is_plaintext_beside_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["beco.test"])
    ms = write_network(tmp_path, _addresses("rendezvous", "validator", "sst", "user-a-0"))
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca)]
    hp = {n: f"127.0.0.1:{free_port()}" for n in ("rendezvous", "validator")}
    procs = [start_node(tmp_path, n, *tls, "--health-listen", hp[n]) for n in hp]
    try:
        # the kubelet's probe: plaintext, readiness "" and liveness
        await wait_health(hp["rendezvous"], SERVING, proc=procs[0])
        assert await health(hp["rendezvous"], "liveness") == SERVING
        await wait_health(hp["validator"], SERVING, "liveness", proc=procs[1])
        # no SST: the validator cannot commit anything, so it is not ready
        assert await health(hp["validator"]) == NOT_SERVING
        # the main port still takes mutual TLS only, and agrees with the health port
        main = ms.one("validator").address
        assert await health(main) == "UNAVAILABLE"
        assert await health(main, "", pki.client_credentials()) == NOT_SERVING
        assert await health(main, "liveness", pki.client_credentials()) == SERVING
        # the health port serves nothing else
        async with grpc.aio.insecure_channel(hp["rendezvous"]) as ch:
            q = peer.seal("discover", ppb.DiscoverRequest(), keys.generate_private_key(), "x", 0)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ppb_grpc.RendezvousStub(ch).Discover(q, timeout=2)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        stop(procs)


@pytest.mark.postgres
async def test_sst_waits_for_postgres_and_names_the_cause(tmp_path: Path) -> None:
    # Not under pytest's basetemp: PostgreSQL runs as another user (see conftest.py).
    pg_dir = Path(tempfile.mkdtemp(prefix="beco-pg-"))
    pg_port = free_port()
    write_network(tmp_path, _addresses("rendezvous", "validator", "sst", "user-a-0"))
    hp = f"127.0.0.1:{free_port()}"
    dsn = f"postgresql://beco@127.0.0.1:{pg_port}/beco"
    env = {"BECO_DATABASE_URL": dsn, "PYTHONWARNINGS": "default"}
    sst = start_node(
        tmp_path, "sst", "--insecure", "--health-listen", hp, env={**os.environ, **env}
    )
    pg = EmbeddedPostgres(pg_dir, port=pg_port)
    procs = [sst]
    try:
        await wait_health(hp, SERVING, "liveness", proc=sst)
        await asyncio.sleep(2)  # several connection attempts fail meanwhile
        assert sst.poll() is None, "the SST crashed instead of waiting for PostgreSQL"
        assert await health(hp) == NOT_SERVING
        log = (tmp_path / "sst.log").read_text()
        assert "waiting for PostgreSQL" in log and "cannot connect" in log
        await pg.start()
        await wait_health(hp, SERVING, proc=sst, limit_s=30)
        # PostgreSQL goes away and comes back: NOT_SERVING meanwhile, no restart
        await pg.stop()
        await wait_health(hp, NOT_SERVING, proc=sst, limit_s=30)
        await pg.start()
        await wait_health(hp, SERVING, proc=sst, limit_s=30)
        # a wrong password (as after a re-created network kept the old volume): stays up,
        # NOT_SERVING, the cause logged at error level, never the secret
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("ALTER ROLE beco PASSWORD 'the-right-one'")
            (pg_dir / "pgdata" / "pg_hba.conf").write_text(
                "local all all trust\nhost all all all scram-sha-256\n"
            )
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        bad = {**os.environ, **env}
        bad["BECO_DATABASE_URL"] = f"postgresql://beco:s3cret-pw@127.0.0.1:{pg_port}/beco"
        (tmp_path / "sst2").mkdir()
        for f in ("membership.json", "sst.key"):
            shutil.copy(tmp_path / f, tmp_path / "sst2" / f)
        hp2 = f"127.0.0.1:{free_port()}"
        sst2 = start_node(
            tmp_path / "sst2", "sst", "--insecure", "--health-listen", hp2,
            "--listen", f"127.0.0.1:{free_port()}", env=bad,
        )  # fmt: skip
        procs.append(sst2)
        await wait_health(hp2, SERVING, "liveness", proc=sst2)
        log2 = ""
        for _ in range(100):
            log2 = (tmp_path / "sst2" / "sst.log").read_text()
            if "refused the password" in log2:
                break
            await asyncio.sleep(0.1)
        assert "refused the password" in log2 and '"level": "error"' in log2, log2
        assert "s3cret-pw" not in log2
        assert sst2.poll() is None and await health(hp2) == NOT_SERVING
    finally:
        stop(procs)
        await pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
    assert sst.returncode == 0
    for log_file in (tmp_path / "sst.log", tmp_path / "sst2" / "sst.log"):
        assert NEVER_AWAITED not in log_file.read_text()


def test_a_node_that_cannot_start_says_why_without_unawaited_coroutines(tmp_path: Path) -> None:
    ms = write_network(tmp_path, _addresses("rendezvous", "validator", "sst", "user-a-0"))
    host, port = ms.one("validator").address.split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        p = start_node(tmp_path, "validator", "--insecure")
        assert p.wait(30) == 2
    log = (tmp_path / "validator.log").read_text()
    assert "cannot start" in log and "cannot listen" in log
    assert NEVER_AWAITED not in log, log


async def test_a_node_advertises_its_membership_address(tmp_path: Path) -> None:
    addrs = _addresses("rendezvous", "validator", "sst", "user-a-0")
    vport = free_port()
    addrs["validator"] = f"localhost:{vport}"  # the membership's name for it
    ms = write_network(tmp_path, addrs)
    procs = [start_node(tmp_path, "rendezvous", "--insecure")]
    # it listens on another spelling of the address: the membership's is what it advertises
    procs.append(start_node(tmp_path, "validator", "--insecure", "--listen", f"127.0.0.1:{vport}"))
    user_key = keys.private_key_from_pem((tmp_path / "user-a-0.key").read_bytes())
    user = ms.one("user")
    try:
        async with grpc.aio.insecure_channel(ms.one("rendezvous").address) as ch:
            stub = ppb_grpc.RendezvousStub(ch)
            q = ppb.DiscoverRequest(role="validator")
            found: list[ppb.PeerEnvelope] = []
            for _ in range(300):
                env = peer.seal("discover", q, user_key, user.peer_id, now_ms())
                try:
                    found = list((await stub.Discover(env, timeout=2)).records)
                except grpc.aio.AioRpcError:
                    found = []
                if found:
                    break
                await asyncio.sleep(0.1)
            assert len(found) == 1
            rec = ppb.PeerRecord()
            rec.ParseFromString(found[0].payload)
            assert rec.address == f"localhost:{vport}"
            # a record with a wildcard address is refused: nobody could reach it
            bad = ppb.PeerRecord(
                peer_id=user.peer_id, name=user.name, role="user", zone="a", address="0.0.0.0:9001"
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Register(
                    peer.seal("peer_record", bad, user_key, user.peer_id, now_ms()), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "wildcard" in (err.value.details() or "")
    finally:
        stop(procs)


def test_a_wildcard_advertise_is_refused(tmp_path: Path) -> None:
    write_network(tmp_path, _addresses("rendezvous", "validator", "sst", "user-a-0"))
    p = start_node(tmp_path, "validator", "--insecure", "--advertise", "0.0.0.0:9001")
    assert p.wait(30) == 2
    assert "wildcard" in (tmp_path / "validator.log").read_text()
    # a membership that lists a wildcard address cannot be advertised either
    write_network(tmp_path, {**_addresses("rendezvous", "sst", "user-a-0"), "validator": "[::]:9"})
    p = start_node(tmp_path, "validator", "--insecure", "--listen", f"127.0.0.1:{free_port()}")
    assert p.wait(30) == 2
    assert "--advertise" in (tmp_path / "validator.log").read_text()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_wildcard_listen_in_a_network_namespace(tmp_path: Path) -> None:
    """What the operator does (--listen=0.0.0.0:PORT), inside a private network namespace
    (only loopback), so no wildcard listener is ever opened in the host's namespace."""
    script = Path(__file__).with_name("wildcard_listen.py")
    out = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$1" "$2"',
         sys.executable, str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3],
    )  # fmt: skip
    if out.returncode == 1 and "Operation not permitted" in out.stderr:
        pytest.skip("no permission to create a network namespace")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "advertised localhost:" in out.stdout
