"""The rendezvous node: membership-checked discovery.

Peers register a ``PeerRecord`` signed with their own key (kind
``peer_record``). The rendezvous accepts it only from a current member whose
peer id, role and zone match the membership, keeps it for ``--peer-ttl-ms``,
and hands out the signed records (not its own word) on ``Discover``, so a
client can check each one against the membership itself. Records of peers
that leave the membership disappear at once. A record with a wildcard address
(``0.0.0.0``, ``::``) is refused: nobody can reach it.
"""

from __future__ import annotations

from typing import Any

import grpc
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc

from beco_node import metrics, peer
from beco_node.errors import InvalidArgument, PermissionDenied
from beco_node.services.runtime import Runtime, rpc_handler
from beco_node.settings import is_wildcard

Ctx = grpc.aio.ServicerContext[Any, Any]


class RendezvousService(ppb_grpc.RendezvousServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.records: dict[str, tuple[int, ppb.PeerEnvelope]] = {}  # peer id -> (expiry, record)

    def _live(self) -> list[ppb.PeerEnvelope]:
        now = self.rt.now_ms()
        ms = self.rt.membership
        out = []
        for pid, (exp, env) in list(self.records.items()):
            if exp <= now or ms.by_peer_id(pid) is None:
                del self.records[pid]
                continue
            out.append(env)
        metrics.CONNECTED_PEERS.set(len(out))
        return out

    @rpc_handler("rendezvous.Register")
    async def Register(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.RegisterReply:
        ms = self.rt.membership
        member = peer.open_envelope(request, "peer_record", ms, self.rt.now_ms())
        rec = peer.parse(ppb.PeerRecord, request.payload)
        assert isinstance(rec, ppb.PeerRecord)
        if rec.peer_id != member.peer_id or rec.role != member.role or rec.zone != member.zone:
            raise PermissionDenied(
                f"peer record of {member.name} does not match the membership (id, role, zone)"
            )
        if not rec.address:
            raise InvalidArgument("peer record without an address")
        if is_wildcard(rec.address):
            raise InvalidArgument(
                f"peer record of {member.name} advertises the wildcard address {rec.address!r}"
            )
        ttl = self.rt.settings.peer_ttl_ms
        self.records[member.peer_id] = (self.rt.now_ms() + ttl, request)
        self._live()
        return ppb.RegisterReply(ttl_ms=ttl, membership_generation=ms.generation)

    @rpc_handler("rendezvous.Discover")
    async def Discover(self, request: ppb.PeerEnvelope, context: Ctx) -> ppb.DiscoverReply:
        peer.open_envelope(request, "discover", self.rt.membership, self.rt.now_ms())
        q = peer.parse(ppb.DiscoverRequest, request.payload)
        assert isinstance(q, ppb.DiscoverRequest)
        ms = self.rt.membership
        out = []
        for env in self._live():
            m = ms.by_peer_id(env.sender)
            if m is not None and (not q.role or m.role == q.role):
                out.append(env)
        return ppb.DiscoverReply(records=out)


async def register_loop(rt: Runtime) -> None:
    """Every node but the rendezvous: keep its signed record alive, learn others' addresses."""
    import asyncio
    import logging

    log = logging.getLogger("beco.rendezvous")
    warned = False
    while True:
        ttl = rt.settings.peer_ttl_ms
        if not rt.is_member:  # the rendezvous would refuse us; wait to be added
            await asyncio.sleep(rt.settings.membership_poll_ms / 1000)
            continue
        try:
            rdv = rt.membership.one("rendezvous")
            stub = ppb_grpc.RendezvousStub(rt.peer_channel(rdv))
            rec = ppb.PeerRecord(
                peer_id=rt.peer_id,
                name=rt.me.name,
                role=rt.me.role,
                zone=rt.me.zone,
                address=rt.advertise,
                expires_ms=rt.now_ms() + ttl,
            )
            reply = await stub.Register(
                peer.seal("peer_record", rec, rt.key, rt.peer_id, rt.now_ms()), timeout=5
            )
            ttl = reply.ttl_ms or ttl
            found = await stub.Discover(
                peer.seal("discover", ppb.DiscoverRequest(), rt.key, rt.peer_id, rt.now_ms()),
                timeout=5,
            )
            learnt: dict[str, str] = {}
            for env in found.records:
                try:
                    m = peer.open_envelope(env, "peer_record", rt.membership, rt.now_ms(), 10**12)
                except Exception:
                    continue
                r = peer.parse(ppb.PeerRecord, env.payload)
                assert isinstance(r, ppb.PeerRecord)
                if r.peer_id == m.peer_id and r.address:
                    learnt[m.peer_id] = r.address
            rt.discovered = learnt
            metrics.CONNECTED_PEERS.set(len(learnt))
            warned = False
        except Exception as exc:
            if not warned:
                log.warning("rendezvous unreachable: %s", exc)
                warned = True
            ttl = 3000
        await asyncio.sleep(max(ttl / 3000, 0.5))
