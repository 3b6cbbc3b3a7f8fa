"""The largest state the limits allow fits every peer message that carries it, and an owner
can always revoke (a revoke never grows a state)."""

import pytest
from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco_node import auth, keys, limits, model, peer
from beco_node.errors import BecoError
from beco_node.services import sst as sst_service

NOW = 1_700_000_000_000
BIG = 2**63 - 1
# A four-byte UTF-8 character that PRECIS keeps as it is (CJK Extension B).
WIDE = "\U00020000"
LONGEST = WIDE * limits.MAX_NAME_CHARS
# What the largest peer message may use: 8 KiB stay free for fields added later.
BUDGET = limits.MAX_MESSAGE_BYTES - 8 * 1024


def _ids(prefix: int, n: int) -> list[str]:
    return [f"{prefix:02x}{i:030x}" for i in range(n)]


def largest_state() -> pb.UserState:
    key = keys.generate_private_key()
    st = pb.UserState(
        user_id="f" * 32,
        public_key=keys.public_key_bytes(key),
        sequence=BIG,
        created_ms=BIG,
        updated_ms=BIG,
    )
    half = limits.MAX_GRANTEES_PER_FIELD // 2
    for i, fs in enumerate((st.first_name, st.middle_names, st.last_name)):
        n_values = limits.MAX_MIDDLE_NAMES if fs is st.middle_names else 1
        fs.values.extend([LONGEST] * n_values)
        fs.editors.extend(_ids(2 * i, half))
        fs.viewers.extend(_ids(2 * i + 1, limits.MAX_GRANTEES_PER_FIELD - half))
    return st


def largest_request() -> bytes:
    key = keys.generate_private_key()
    req = pb.CreateUserRequest(
        first_name=LONGEST, middle_names=[LONGEST] * limits.MAX_MIDDLE_NAMES, last_name=LONGEST
    )
    model.check_limits(model.CREATE_USER, req)  # really allowed
    auth.sign_request(model.CREATE_USER, req, key, NOW, nonce=b"n" * auth.MAX_NONCE)
    return req.SerializeToString()


def test_longest_name_is_allowed() -> None:
    limits.check_name("first_name", LONGEST)
    assert len(LONGEST.encode()) == 4 * limits.MAX_NAME_CHARS


def test_every_peer_message_carrying_the_largest_state_fits() -> None:
    key = keys.generate_private_key()
    me = keys.peer_id(keys.public_key_bytes(key))
    st = largest_state()
    state = st.SerializeToString(deterministic=True)
    head = pb.TreeHead(
        tree_size=BIG, root_hash=b"r" * 32, timestamp_ms=BIG, signature=b"s" * 64,
        sst_public_key=b"k" * 32,
    )  # fmt: skip
    info = pb.CommitInfo(
        proposal_id="p" * 64, sequence=BIG, leaf_index=BIG, tree_head=head, committed_ms=BIG
    )
    applied = peer.seal(
        "applied", ppb.Applied(user_id=st.user_id, sequence=BIG, state=state, commit=info),
        key, me, NOW,
    )  # fmt: skip
    prop = ppb.Proposal(
        proposal_id="p" * 64, user_id=st.user_id, kind="create_user", method=model.UPDATE_MIDDLE,
        request=largest_request(), origin=me,
    )  # fmt: skip
    header = ppb.ProposalHeader(proposal=prop, sequence=BIG, validator_ts_ms=BIG, validator=me)
    vote_request = peer.seal(
        "vote_batch", ppb.BatchVoteRequest(headers=[header], previous=[applied]), key, me, NOW
    )
    digest = peer.header_digest(header)
    vote = peer.sign_batch_vote(digest, [], key, me)
    certificate = peer.seal(
        "commit_batch",
        ppb.BatchCertificate(digests=[digest], indexes=[0], headers=[header], votes=[vote] * 9),
        key, me, NOW,
    )  # fmt: skip
    one = ppb.Applied(user_id=st.user_id, sequence=BIG, state=state, commit=info)
    notices = [
        peer.seal("applied_batch", ppb.AppliedBatch(applied=chunk), key, me, NOW)
        for chunk in sst_service._chunks([one] * 5, sst_service.NOTICE_BYTES)
    ]
    outcome = ppb.Outcome(status=ppb.OUTCOME_COMMITTED, commit=info, state=state, applied=applied)
    sizes = {
        "state": len(state),
        "applied notice": applied.ByteSize(),
        "vote request": vote_request.ByteSize(),
        "batch certificate of the largest change": certificate.ByteSize(),
        "batch notice": max(n.ByteSize() for n in notices),
        "sst outcome": outcome.ByteSize(),
        "state reply": ppb.UserStateReply(found=True, sequence=BIG, state=state).ByteSize(),
        "user view": model.view(st, st.user_id).ByteSize(),
    }
    for what, size in sizes.items():
        assert size <= BUDGET, f"{what}: {size} bytes, budget {BUDGET} ({sizes})"
    assert sizes["state"] < 26 * 1024


def _grant(st: pb.UserState, grantee: str, method: str = model.GRANT) -> pb.UserState:
    req = pb.AccessRequest(
        user_id=st.user_id, field=pb.FIELD_FIRST_NAME, grantee=grantee, access=pb.ACCESS_VIEWER
    )
    return model.apply(method, req, st.user_id, st, st.sequence + 1, NOW)


def test_grants_stop_at_the_cap_and_revokes_always_work() -> None:
    st = pb.UserState(user_id="a" * 32, public_key=b"k" * 32, sequence=1)
    ids = _ids(9, limits.MAX_GRANTEES_PER_FIELD + 1)
    for g in ids[:-1]:
        st = _grant(st, g)
    with pytest.raises(BecoError) as err:
        _grant(st, ids[-1])
    assert err.value.code == "RESOURCE_EXHAUSTED" and "revoke one first" in err.value.message
    # A state above the cap (written before the cap existed) can still be revoked down.
    st.first_name.viewers.append(ids[-1])
    while st.first_name.viewers:
        before = st.ByteSize()
        st = _grant(st, st.first_name.viewers[-1], model.REVOKE)
        assert st.ByteSize() < before


def test_a_revoke_never_grows_the_largest_state() -> None:
    st = largest_state()
    st.sequence = 2**40
    before = st.ByteSize()
    after = _grant(st, st.first_name.viewers[0], model.REVOKE)
    assert after.ByteSize() < before
