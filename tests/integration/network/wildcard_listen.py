"""Run inside a private network namespace by test_node_startup: a validator listening on
0.0.0.0 registers the membership's address, and is reachable there. Prints what it saw."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import grpc
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import keys, peer
from beco_node.clock import now_ms
from beco_node.pg.embedded import free_port

from tests.integration.network.nodes import (
    SERVING,
    start_node,
    stop,
    wait_health,
    write_network,
)


async def main(d: Path) -> None:
    vport = free_port()
    ms = write_network(
        d,
        {
            "rendezvous": f"127.0.0.1:{free_port()}",
            "validator": f"localhost:{vport}",
            "sst": f"127.0.0.1:{free_port()}",
            "user-a-0": f"127.0.0.1:{free_port()}",
        },
    )
    procs = [start_node(d, "rendezvous", "--insecure")]
    procs.append(start_node(d, "validator", "--insecure", "--listen", f"0.0.0.0:{vport}"))
    try:
        await wait_health(f"localhost:{vport}", SERVING, "liveness", proc=procs[1])
        user = ms.one("user")
        key = keys.private_key_from_pem((d / "user-a-0.key").read_bytes())
        async with grpc.aio.insecure_channel(ms.one("rendezvous").address) as ch:
            stub = ppb_grpc.RendezvousStub(ch)
            for _ in range(300):
                env = peer.seal("discover", ppb.DiscoverRequest(), key, user.peer_id, now_ms())
                try:
                    found = list((await stub.Discover(env, timeout=2)).records)
                except grpc.aio.AioRpcError:
                    found = []
                if found:
                    break
                await asyncio.sleep(0.1)
        for env in found:
            rec = ppb.PeerRecord()
            rec.ParseFromString(env.payload)
            print(f"{rec.name} advertised {rec.address}")
            if rec.address != ms.by_peer_id(rec.peer_id).address:  # type: ignore[union-attr]
                raise SystemExit(f"{rec.name} advertised {rec.address}, not its membership address")
        if not found:
            raise SystemExit("nothing registered")
    finally:
        stop(procs)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
