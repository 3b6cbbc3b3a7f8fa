"""The SST keeps compact outcomes (commit info, no state) and rebuilds a duplicate's answer."""

from types import SimpleNamespace

from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco_node import auth, keys
from beco_node.services.sst import SstService


class _Store:
    def tree_head(self) -> SimpleNamespace:
        return SimpleNamespace(tree_size=7)

    async def get_user(self, uid: str) -> None:
        return None


async def test_duplicate_is_answered_from_compact_commit_info() -> None:
    key = keys.generate_private_key()
    pub = keys.public_key_bytes(key)
    rt = SimpleNamespace(
        key=key, public_key=pub, peer_id=keys.peer_id(pub), now_ms=lambda: 1_700_000_000_000
    )
    svc = SstService(rt, _Store())  # type: ignore[arg-type]
    uid = "a" * 32
    state = pb.UserState(user_id=uid, sequence=3).SerializeToString()
    svc.cache.put(uid, (3, state))
    info = pb.CommitInfo(proposal_id="p" * 64, sequence=2, leaf_index=5)
    svc.recent.put("p" * 64, info.SerializeToString())
    assert svc.recent.bytes < 1024  # no state kept per outcome
    out = await svc._duplicate(uid, svc.recent.get("p" * 64) or b"")
    assert out.status == ppb.OUTCOME_COMMITTED
    assert out.commit.duplicate and out.commit.sequence == 2 and out.commit.leaf_index == 5
    assert out.state == state
    applied = ppb.Applied.FromString(out.applied.payload)
    assert (applied.user_id, applied.sequence, applied.state) == (uid, 3, state)


class _PruningStore:
    def __init__(self) -> None:
        self.cutoffs: list[int] = []

    def tree_head(self) -> SimpleNamespace:
        return SimpleNamespace(tree_size=0)

    async def prune_failures(self, signed_before_ms: int) -> int:
        self.cutoffs.append(signed_before_ms)
        return 0


async def test_the_prune_cutoff_follows_the_skew_setting() -> None:
    """Failure records are pruned at now - admission horizon, the horizon from --skew-ms."""
    store = _PruningStore()
    for skew_ms in (30_000, 5_000):
        rt = SimpleNamespace(
            key=None,
            public_key=b"",
            peer_id="",
            now_ms=lambda: 1_700_000_000_000,
            settings=SimpleNamespace(skew_ms=skew_ms),
        )
        await SstService(rt, store).prune_failures()  # type: ignore[arg-type]
    horizons = [1_700_000_000_000 - c for c in store.cutoffs]
    assert horizons == [auth.admission_horizon_ms(30_000), auth.admission_horizon_ms(5_000)]
    assert horizons[0] - horizons[1] == 2 * (30_000 - 5_000)  # two skews: sign -> vote -> commit
