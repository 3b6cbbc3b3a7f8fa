"""The SST answers a batch's CommitBatch before it sends the batch's commit notices.

The validator waits for the reply; the user nodes also hear of the commits through the
vote requests the validator forwards and through catch-up, so the notices can follow.
Deterministic: the handler is awaited directly and nothing else may run before it returns.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco.v1 import peer_pb2_grpc as ppb_grpc
from beco_node import auth, batch, keys, membership, model, peer
from beco_node.services import sst as sst_module
from beco_node.services.sst import SstService
from beco_node.sst.records import CommitEntry, CommitResult
from beco_node.testkit import InProcessNetwork

NOW = 1_700_000_000_000


def _pid(k: Any) -> str:
    return keys.peer_id(keys.public_key_bytes(k))


class _Store:
    def __init__(self) -> None:
        self.size = 0

    def tree_head(self) -> SimpleNamespace:
        return SimpleNamespace(tree_size=self.size)

    async def get_user(self, uid: str) -> None:
        return None

    async def commit(self, e: CommitEntry) -> CommitResult:
        self.size += 1
        sth = SimpleNamespace(
            tree_size=self.size, root_hash=b"r" * 32, timestamp_ms=NOW, signature=b"s" * 64
        )
        return CommitResult(e.proposal_id, e.user_id, e.sequence, self.size - 1, sth, False)  # type: ignore[arg-type]

    async def commit_many(self, entries: list[CommitEntry]) -> list[CommitResult | Exception]:
        return [await self.commit(e) for e in entries]  # in order, as SstStore's


class _UserNode(ppb_grpc.UserNodeServicer):
    def __init__(self, name: str, events: list[tuple[str, int]]) -> None:
        self.name, self.events = name, events

    async def ApplyBatch(self, request: ppb.PeerEnvelope, context: Any) -> ppb.ApplyReply:
        ab = ppb.AppliedBatch.FromString(request.payload)
        for a in ab.applied:
            self.events.append((self.name, a.commit.leaf_index))
        return ppb.ApplyReply()


class _Tasks(set[asyncio.Task[Any]]):
    """The tasks the SST started (as the runtime owns them)."""

    def __init__(self) -> None:
        super().__init__()
        self.grew = asyncio.Event()

    async def at_least(self, n: int) -> None:
        while len(self) < n:
            self.grew.clear()
            await self.grew.wait()


def _setup(
    store: _Store,
) -> tuple[SstService, ppb.PeerEnvelope, list[tuple[str, int]], _Tasks]:
    roles = {
        "r": "rendezvous",
        "v": "validator",
        "s": "sst",
        "u0": "user",
        "u1": "user",
        "u2": "user",
    }
    ks = {n: keys.generate_private_key() for n in roles}
    members = [
        membership.make_member(
            n, roles[n], "a", f"127.0.0.1:{9100 + i}", keys.public_key_bytes(ks[n])
        )
        for i, n in enumerate(ks)
    ]
    ms = membership.build("t", 1, 2, members)
    net = InProcessNetwork()
    events: list[tuple[str, int]] = []
    for m in ms.user_nodes:
        net.serve(m.address, [(ppb_grpc.add_UserNodeServicer_to_server, _UserNode(m.name, events))])
    tasks = _Tasks()

    def start(coro: Any) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        tasks.grew.set()
        return t

    rt = SimpleNamespace(
        key=ks["s"],
        public_key=keys.public_key_bytes(ks["s"]),
        peer_id=_pid(ks["s"]),
        now_ms=lambda: NOW,
        membership=ms,
        settings=SimpleNamespace(skew_ms=30_000),
        peer_channel=lambda m: net.channel(m.address),
        start=start,
        spawn=start,
    )
    svc = SstService(rt, store)  # type: ignore[arg-type]

    headers = []
    for _ in range(3):  # three new users, one batch
        client = keys.generate_private_key()
        req = pb.CreateUserRequest(first_name="Ada")
        auth.sign_request(model.CREATE_USER, req, client, NOW)
        prop = ppb.Proposal(
            proposal_id=peer.proposal_id(req.auth.signature),
            user_id=_pid(client),
            kind="create_user",
            method=model.CREATE_USER,
            request=req.SerializeToString(),
            origin=_pid(ks["u0"]),
        )
        headers.append(
            ppb.ProposalHeader(
                proposal=prop, sequence=1, validator_ts_ms=NOW, validator=_pid(ks["v"])
            )
        )
    digests = [peer.header_digest(h) for h in headers]
    root = batch.root(digests)
    cert = ppb.BatchCertificate(
        digests=digests,
        indexes=[0, 1, 2],
        headers=headers,
        votes=[peer.sign_batch_vote(root, [], ks[u], _pid(ks[u])) for u in ("u0", "u1")],
    )
    env = peer.seal("commit_batch", cert, ks["v"], _pid(ks["v"]), NOW)
    return svc, env, events, tasks


async def test_the_reply_goes_before_the_notices_which_keep_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sst_module, "NOTICE_BYTES", 1)  # one message per commit: an order
    svc, env, events, tasks = _setup(_Store())
    out = await svc.CommitBatch(env, None)
    assert [o.status for o in out.outcomes] == [ppb.OUTCOME_COMMITTED] * 3
    assert len(out.applied) == 3  # the reply carries the notices...
    assert events == []  # ...and nothing was sent to a user node before it was returned

    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for u in ("u0", "u1", "u2"):  # every node got every notice, in commit order
        assert [i for n, i in events if n == u] == [0, 1, 2]


class _SlowStore(_Store):
    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def commit(self, e: CommitEntry) -> CommitResult:
        await self.go.wait()
        return await super().commit(e)


async def test_a_caller_gone_mid_commit_does_not_lose_the_notices() -> None:
    store = _SlowStore()
    svc, env, events, tasks = _setup(store)
    call = asyncio.ensure_future(svc.CommitBatch(env, None))
    await asyncio.wait_for(tasks.at_least(1), 10)
    call.cancel()  # the validator's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await call
    store.go.set()
    # the commit task and one notice task per user node
    await asyncio.wait_for(tasks.at_least(4), 10)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert sorted(events) == sorted((u, i) for u in ("u0", "u1", "u2") for i in range(3))


class _RecordingStore(_Store):
    def __init__(self) -> None:
        super().__init__()
        self.entries: list[CommitEntry] = []

    async def commit(self, e: CommitEntry) -> CommitResult:
        self.entries.append(e)
        return await super().commit(e)


async def test_each_leaf_names_its_own_proposal_digest() -> None:
    store = _RecordingStore()
    svc, env, _, tasks = _setup(store)
    out = await svc.CommitBatch(env, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [o.status for o in out.outcomes] == [ppb.OUTCOME_COMMITTED] * 3
    cert = ppb.BatchCertificate.FromString(env.payload)
    leaves = [pb.LogLeaf.FromString(e.leaf_data) for e in store.entries]
    assert [leaf.proposal_id for leaf in leaves] == [h.proposal.proposal_id for h in cert.headers]
    assert [leaf.proposal_digest for leaf in leaves] == [
        peer.header_digest(h) for h in cert.headers
    ]
