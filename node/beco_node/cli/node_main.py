"""``beco-node --role rendezvous|validator|user|sst``: one entrypoint for every node.

Settings come from flags or ``BECO_*`` environment variables (``--help``).
SIGTERM / SIGINT stop the node gracefully (in-flight RPCs get a short grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from beco_node import logs, metrics, settings
from beco_node.membership import MembershipError

log = logging.getLogger("beco.node")


async def run(s: settings.Settings) -> None:
    from beco.v1 import identity_pb2, peer_pb2
    from beco.v1 import identity_pb2_grpc as pb_grpc
    from beco.v1 import peer_pb2_grpc as ppb_grpc

    from beco_node.services.runtime import Runtime

    rt = Runtime(s)
    logs.setup(rt.me.name, s.log_level)
    server = rt.make_server()
    services: list[str] = []
    closers = []
    background = [rt.watch_membership()]
    peer_services = peer_pb2.DESCRIPTOR.services_by_name
    if s.role == "rendezvous":
        from beco_node.services.rendezvous import RendezvousService

        ppb_grpc.add_RendezvousServicer_to_server(RendezvousService(rt), server)
        services.append(peer_services["Rendezvous"].full_name)
    else:
        from beco_node.services.rendezvous import register_loop

        background.append(register_loop(rt))
    if s.role == "validator":
        from beco_node.services.validator import ValidatorService

        ppb_grpc.add_ValidatorServicer_to_server(ValidatorService(rt), server)
        services.append(peer_services["Validator"].full_name)
    elif s.role == "sst":
        from beco_node.services.sst import SstService
        from beco_node.sst.store import SstStore

        store = await SstStore.open(s.database_url, rt.key)
        closers.append(store.close)
        ppb_grpc.add_SstServicer_to_server(SstService(rt, store), server)
        services.append(peer_services["Sst"].full_name)
    elif s.role == "user":
        from beco_node.services.user import IdentityService, UserNode, VoterService

        node = UserNode(rt)
        pb_grpc.add_IdentityServicer_to_server(IdentityService(node), server)
        ppb_grpc.add_UserNodeServicer_to_server(VoterService(node), server)
        services.append(identity_pb2.DESCRIPTOR.services_by_name["Identity"].full_name)
        services.append(peer_services["UserNode"].full_name)
        background.append(node.load_all())
    port = metrics.serve(s.metrics_listen)
    if port:
        log.info("metrics on /metrics", extra={"fields": {"metrics_port": port}})
    await rt.serve(server, services)
    tasks = [asyncio.ensure_future(c) for c in background]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.stop(grace=2)
    for t in tasks:
        t.cancel()
    await rt.close()
    for close in closers:
        with contextlib.suppress(Exception):
            await close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    s = settings.parse(argv)
    logs.setup(f"{s.role}", s.log_level)
    try:
        asyncio.run(run(s))
    except (MembershipError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
