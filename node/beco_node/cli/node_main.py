"""``beco-node --role rendezvous|validator|user|sst``: one entrypoint for every node.

Settings come from flags or ``BECO_*`` environment variables (``--help``).
SIGTERM / SIGINT stop the node gracefully (in-flight RPCs get a short grace).
The server starts first and reports NOT_SERVING until the role is ready
(see ``beco_node.services.startup``); background loops run in one TaskGroup,
so a failing loop stops the node instead of dying unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

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
    closers: list[Callable[[], Awaitable[None]]] = []
    # Coroutine functions, not coroutines: nothing is created that a crash could leave unawaited.
    background: list[Callable[[], Coroutine[Any, Any, Any]]] = [rt.watch_membership]
    peer_services = peer_pb2.DESCRIPTOR.services_by_name
    sst_service: list[Any] = []  # the SST's servicer, once PostgreSQL is connected
    if s.role == "rendezvous":
        from beco_node.services.rendezvous import RendezvousService

        rt.add_servicer(ppb_grpc.add_RendezvousServicer_to_server, RendezvousService(rt), server)
        services.append(peer_services["Rendezvous"].full_name)
    else:
        from beco_node.services.rendezvous import register_loop

        background.append(lambda: register_loop(rt))
    if s.role == "validator":
        from beco_node.services.validator import ValidatorService

        rt.add_servicer(ppb_grpc.add_ValidatorServicer_to_server, ValidatorService(rt), server)
        services.append(peer_services["Validator"].full_name)
        rt.set_ready("sst", "the validator has not reached the SST yet")
        background.append(lambda: rt.watch_ready("sst", "sst"))
    elif s.role == "sst":
        from beco_node.services.startup import DB_CONDITION, DB_CONNECTING

        rt.set_ready(DB_CONDITION, DB_CONNECTING)
        desc = peer_services["Sst"]
        rt.add_servicer(
            ppb_grpc.add_SstServicer_to_server,
            rt.gated(desc, lambda: sst_service[0] if sst_service else None, label_prefix="sst."),
            server,
        )
        services.append(desc.full_name)
    elif s.role == "user":
        from beco_node.services.user import IdentityService, UserNode, VoterService

        node = UserNode(rt)
        identity = identity_pb2.DESCRIPTOR.services_by_name["Identity"]
        identity_service = IdentityService(node)
        rt.add_servicer(
            pb_grpc.add_IdentityServicer_to_server,
            rt.gated(identity, lambda: identity_service),
            server,
        )
        rt.add_servicer(ppb_grpc.add_UserNodeServicer_to_server, VoterService(node), server)
        services.append(identity.full_name)
        services.append(peer_services["UserNode"].full_name)

    async def become_ready() -> None:
        """The role's own start-up work, after the server answers (NOT_SERVING) probes."""
        if s.role == "sst":
            from beco_node.services.sst import SstService
            from beco_node.services.startup import open_store, watch_database

            store = await open_store(rt)
            closers.append(store.close)
            svc = SstService(rt, store)
            sst_service.append(svc)
            async with asyncio.TaskGroup() as sst_tasks:  # within the node's TaskGroup
                sst_tasks.create_task(watch_database(rt, store))
                sst_tasks.create_task(svc.prune_loop())
        elif s.role == "user" and rt.is_member:  # else: once added (UserNode)
            node.start_loading()

    port = metrics.serve(s.metrics_listen)
    if port:
        log.info("metrics on /metrics", extra={"fields": {"metrics_port": port}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await rt.serve(server, services)
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[Any]] = [
                tg.create_task(fn()) for fn in [*background, become_ready]
            ]
            await stop.wait()
            log.info("stopping")
            rt.set_ready("stopping", "this node is shutting down")
            await rt.publish_health()
            for t in tasks:
                t.cancel()
    finally:
        rt.drain_streams()
        await server.stop(grace=2)
        await rt.close()
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
    log.info("stopped")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    s = settings.parse(argv)
    logs.setup(f"{s.role}", s.log_level)
    from beco_node.sst.records import StoreError

    try:
        asyncio.run(run(s))
    except (MembershipError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except BaseExceptionGroup as group:  # the start-up or a background loop failed
        for leaf in _leaves(group):
            if isinstance(leaf, MembershipError | OSError | StoreError):
                log.error("stopped: %s", leaf)
            else:
                log.error("stopped: %s", leaf, exc_info=leaf)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
