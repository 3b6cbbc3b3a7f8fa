from beco.v1 import identity_pb2 as pb
from beco_node.services.user import UserStore


def state(uid: str, seq: int, viewers: list[str] = (), editors: list[str] = ()) -> bytes:  # type: ignore[assignment]
    st = pb.UserState(user_id=uid, sequence=seq)
    st.first_name.viewers.extend(viewers)
    st.last_name.editors.extend(editors)
    return st.SerializeToString()


def test_newer_states_replace_older_and_index_follows() -> None:
    s = UserStore()
    assert s.put(1, state("a" * 32, 1))
    assert s.put(2, state("a" * 32, 2, viewers=["b" * 32]))
    assert s.grants == {"b" * 32: {"a" * 32}}
    assert not s.put(2, state("a" * 32, 2))  # same sequence again: ignored
    assert not s.put(1, state("a" * 32, 1))  # older: ignored
    assert s.put(3, state("a" * 32, 3, editors=["c" * 32]))
    assert s.grants == {"c" * 32: {"a" * 32}}
    got = s.get("a" * 32)
    assert got is not None and got.sequence == 3
    assert s.sequence("a" * 32) == 3 and s.sequence("z" * 32) == 0
    assert s.get("z" * 32) is None
