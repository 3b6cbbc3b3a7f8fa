"""A user node opens and applies each SST notice once, however often it arrives (from the
SST, and again inside the validator's vote requests)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco_node import keys, membership, peer
from beco_node.lru import BoundedLru
from beco_node.services import user as user_module
from beco_node.services.user import VoterService

NOW = 1_700_000_000_000


async def test_a_notice_is_opened_and_applied_once(monkeypatch: pytest.MonkeyPatch) -> None:
    roles = {"r": "rendezvous", "v": "validator", "s": "sst", "u0": "user", "u1": "user"}
    ks = {n: keys.generate_private_key() for n in roles}
    ms = membership.build(
        "t",
        1,
        2,
        [
            membership.make_member(
                n, roles[n], "a", f"127.0.0.1:{9200 + i}", keys.public_key_bytes(ks[n])
            )
            for i, n in enumerate(ks)
        ],
    )
    applied: list[tuple[int, str]] = []
    node = SimpleNamespace(
        notices_applied=BoundedLru(user_module.NOTICES_APPLIED, user_module.NOTICES_APPLIED * 1024),
        apply_commit=lambda seq, data, uid: applied.append((seq, uid)),
        heard_of=lambda size: None,
        known_head=0,
        rt=SimpleNamespace(membership=ms, now_ms=lambda: NOW),
    )
    voter = VoterService(node)  # type: ignore[arg-type]
    opened: list[str] = []
    real_open = peer.open_envelope

    def counting_open(env: ppb.PeerEnvelope, *a: Any, **kw: Any) -> Any:
        opened.append(env.kind)
        return real_open(env, *a, **kw)

    monkeypatch.setattr(peer, "open_envelope", counting_open)
    uid = "a" * 32
    notice = peer.seal(
        "applied_batch",
        ppb.AppliedBatch(
            applied=[
                ppb.Applied(
                    user_id=uid,
                    sequence=4,
                    state=pb.UserState(user_id=uid, sequence=4).SerializeToString(),
                )
            ]
        ),
        ks["s"],
        keys.peer_id(keys.public_key_bytes(ks["s"])),
        NOW,
    )
    await voter.ApplyBatch(notice, None)  # from the SST
    voter._apply_notice(notice)  # forwarded by the validator: already applied
    voter._apply_notice(notice)
    assert applied == [(4, uid)]
    assert opened == ["applied_batch"]
    await voter.ApplyBatch(notice, None)  # the same RPC again: authenticated, not re-applied
    assert applied == [(4, uid)] and len(opened) == 2

    forged = ppb.PeerEnvelope()
    forged.CopyFrom(notice)
    forged.signature = bytes(64)  # never verified: never remembered, never applied
    voter._apply_notice(forged)
    assert applied == [(4, uid)]
