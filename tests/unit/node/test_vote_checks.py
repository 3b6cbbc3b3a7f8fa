"""A voter checks a batch's changes in the call; only users whose copy lags wait for the
SST, together, and each change keeps its own verdict."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco_node import auth, keys, model, peer
from beco_node.errors import InvalidArgument, Unavailable
from beco_node.services.user import UserStore, VoterService

NOW = 1_700_000_000_000


def _user() -> tuple[Any, str]:
    k = keys.generate_private_key()
    return k, keys.peer_id(keys.public_key_bytes(k))


def _header(k: Any, uid: str, seq: int, name: str) -> ppb.ProposalHeader:
    req = pb.UpdateFirstNameRequest(user_id=uid, first_name=name)
    auth.sign_request(model.UPDATE_FIRST, req, k, NOW)
    prop = ppb.Proposal(
        proposal_id=peer.proposal_id(req.auth.signature),
        user_id=uid,
        kind="set_first_name",
        method=model.UPDATE_FIRST,
        request=req.SerializeToString(),
    )
    return ppb.ProposalHeader(proposal=prop, sequence=seq, validator_ts_ms=NOW)


def _state(uid: str, seq: int) -> pb.UserState:
    return pb.UserState(user_id=uid, sequence=seq)


async def test_lagging_users_are_fetched_together_and_verdicts_stay_per_change() -> None:
    (ka, a), (kb, b), (kc, c) = _user(), _user(), _user()
    store = UserStore()
    store.put(1, _state(a, 1).SerializeToString())  # a: current
    store.put(1, _state(b, 1).SerializeToString())  # b: behind (the SST has 2)
    both_asked = asyncio.Event()
    asked: list[str] = []

    async def fetch(uid: str) -> pb.UserState | None:
        asked.append(uid)
        if len(asked) == 2:
            both_asked.set()
        await both_asked.wait()  # returns only once both lagging users were asked for
        if uid == c:
            raise Unavailable("the SST is unreachable")
        store.put(2, _state(uid, 2).SerializeToString())
        return store.get(uid)

    node = SimpleNamespace(store=store, own={}, fetch=fetch)
    node.rt = SimpleNamespace(now_ms=lambda: NOW, settings=SimpleNamespace(skew_ms=30_000))
    voter = VoterService(node)  # type: ignore[arg-type]
    headers = [
        _header(ka, a, 2, "Ann"),  # VALID from its copy
        _header(kb, b, 3, "Bob"),  # its copy lags: VALID once fetched
        _header(kc, c, 5, "Cy"),  # lags, and the SST cannot be reached: that reason
        _header(ka, a, 3, "Ann2"),  # a second change of a in one batch
        _header(kb, b, 9, "Bo"),  # (two of b too)
    ]
    verdicts = await asyncio.wait_for(voter._check_all(headers), 10)
    assert sorted(asked) == sorted([b, c])
    assert verdicts[0] is None and verdicts[1] is None
    assert isinstance(verdicts[2], Unavailable)
    assert isinstance(verdicts[3], InvalidArgument) and isinstance(verdicts[4], InvalidArgument)
    assert "two changes of one user" in verdicts[3].message
