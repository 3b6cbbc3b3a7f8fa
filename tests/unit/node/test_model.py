import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, keys, model
from beco_node.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

NOW = 1_700_000_000_000


class Person:
    def __init__(self) -> None:
        self.key = keys.generate_private_key()
        self.id = keys.peer_id(keys.public_key_bytes(self.key))

    def req(self, method: str, msg):
        auth.sign_request(method, msg, self.key, NOW)
        return msg


@pytest.fixture
def alice() -> Person:
    return Person()


@pytest.fixture
def bob() -> Person:
    return Person()


def create(p: Person, **kw) -> pb.UserState:
    return model.apply(
        model.CREATE_USER, p.req(model.CREATE_USER, pb.CreateUserRequest(**kw)), p.id, None, 1, NOW
    )


def set_first(st, who: Person, value: str, seq=None, expected=0):
    r = who.req(
        model.UPDATE_FIRST,
        pb.UpdateFirstNameRequest(user_id=st.user_id, first_name=value, expected_sequence=expected),
    )
    return model.apply(model.UPDATE_FIRST, r, who.id, st, seq or st.sequence + 1, NOW)


def grant(
    st,
    who: Person,
    grantee: str,
    field=pb.FIELD_FIRST_NAME,
    access=pb.ACCESS_EDITOR,
    method=model.GRANT,
):
    r = who.req(
        method, pb.AccessRequest(user_id=st.user_id, field=field, grantee=grantee, access=access)
    )
    return model.apply(method, r, who.id, st, st.sequence + 1, NOW)


def test_create_sets_fields_and_owner(alice: Person) -> None:
    st = create(alice, first_name="Alice", middle_names=["B", "C"], last_name="Smith")
    assert st.user_id == alice.id and st.sequence == 1
    assert list(st.middle_names.values) == ["B", "C"]
    v = model.view(st, alice.id)
    assert v.first_name.readable and v.first_name.caller_is_owner
    assert list(v.last_name.values) == ["Smith"]


def test_create_twice_is_refused(alice: Person) -> None:
    st = create(alice)
    with pytest.raises(AlreadyExists):
        model.apply(
            model.CREATE_USER,
            alice.req(model.CREATE_USER, pb.CreateUserRequest()),
            alice.id,
            st,
            1,
            NOW,
        )


def test_owner_edits_non_editor_is_denied_until_granted(alice: Person, bob: Person) -> None:
    st = create(alice, first_name="Alice")
    st = set_first(st, alice, "Alicia")
    assert st.first_name.values == ["Alicia"] and st.sequence == 2
    with pytest.raises(PermissionDenied):
        set_first(st, bob, "Bobbed")
    st = grant(st, alice, bob.id)
    st = set_first(st, bob, "Ally")
    assert st.first_name.values == ["Ally"]
    # editor of the first name only
    r = bob.req(model.UPDATE_LAST, pb.UpdateLastNameRequest(user_id=st.user_id, last_name="X"))
    with pytest.raises(PermissionDenied):
        model.apply(model.UPDATE_LAST, r, bob.id, st, st.sequence + 1, NOW)


def test_viewer_reads_but_cannot_write_or_grant(alice: Person, bob: Person) -> None:
    carol = Person()
    st = create(alice, first_name="Alice", last_name="Smith")
    st = grant(st, alice, bob.id, access=pb.ACCESS_VIEWER)
    v = model.view(st, bob.id)
    assert v.first_name.readable and list(v.first_name.values) == ["Alice"]
    assert not v.first_name.editors and not v.first_name.viewers  # access lists hidden
    assert not v.last_name.readable and not v.last_name.values
    with pytest.raises(PermissionDenied):
        set_first(st, bob, "Nope")
    with pytest.raises(PermissionDenied):
        grant(st, bob, carol.id, access=pb.ACCESS_VIEWER)


def test_unrelated_caller_sees_only_existence(alice: Person, bob: Person) -> None:
    st = create(alice, first_name="Alice", middle_names=["M"], last_name="Smith")
    v = model.view(st, bob.id)
    assert v.user_id == alice.id and v.sequence == 1
    for fv in (v.first_name, v.middle_names, v.last_name):
        assert not fv.readable and not fv.values and not fv.editors and not fv.viewers
    assert not model.can_see_user(st, bob.id)


def test_editor_may_grant_and_revoke(alice: Person, bob: Person) -> None:
    carol = Person()
    st = create(alice)
    st = grant(st, alice, bob.id)
    st = grant(st, bob, carol.id, access=pb.ACCESS_VIEWER)
    assert list(st.first_name.viewers) == [carol.id]
    st = grant(st, bob, carol.id, access=pb.ACCESS_VIEWER, method=model.REVOKE)
    assert not st.first_name.viewers
    with pytest.raises(FailedPrecondition):
        grant(st, bob, carol.id, access=pb.ACCESS_VIEWER, method=model.REVOKE)


def test_grant_to_owner_is_invalid(alice: Person) -> None:
    st = create(alice)
    with pytest.raises(InvalidArgument):
        grant(st, alice, alice.id)


def test_sequences_are_checked(alice: Person) -> None:
    st = create(alice)
    with pytest.raises(FailedPrecondition, match="wrong sequence"):
        set_first(st, alice, "A", seq=3)
    with pytest.raises(FailedPrecondition, match="expected 5"):
        set_first(st, alice, "A", expected=5)
    assert set_first(st, alice, "A", expected=1).sequence == 2


def test_unknown_user_is_not_found(alice: Person) -> None:
    r = alice.req(model.UPDATE_FIRST, pb.UpdateFirstNameRequest(user_id="0" * 32, first_name="A"))
    with pytest.raises(NotFound):
        model.apply(model.UPDATE_FIRST, r, alice.id, None, 1, NOW)


@pytest.mark.parametrize(
    "value",
    ["x" * 257, "tab\there", "nul\x00", " padded", "line\nbreak"],
)
def test_bad_names_are_invalid(alice: Person, value: str) -> None:
    st = create(alice)
    with pytest.raises(InvalidArgument):
        set_first(st, alice, value)


def test_name_limits_accept_unicode_and_256_chars(alice: Person) -> None:
    st = create(alice)
    assert set_first(st, alice, "é" * 256).first_name.values == ["é" * 256]
    assert set_first(st, alice, "Zoë 李").sequence == 2


def test_too_many_middle_names(alice: Person) -> None:
    with pytest.raises(InvalidArgument, match="at most 16"):
        create(alice, middle_names=[f"m{i}" for i in range(17)])
    assert len(create(alice, middle_names=[f"m{i}" for i in range(16)]).middle_names.values) == 16


def test_bad_user_id_is_invalid(alice: Person) -> None:
    r = alice.req(model.UPDATE_FIRST, pb.UpdateFirstNameRequest(user_id="bob", first_name="A"))
    with pytest.raises(InvalidArgument, match="user id"):
        model.check_limits(model.UPDATE_FIRST, r)


def test_cached_views_equal_the_view_of_every_caller() -> None:
    """model.Views answers what model.view does, for owner, editors, viewers (per field)
    and strangers, and shares one message between callers with the same access."""
    owner, ed, vw, both, nobody, other = (f"{i:032x}" for i in range(1, 7))
    st = pb.UserState(user_id=owner, public_key=b"k" * 32, sequence=4)
    st.first_name.values.append("Ada")
    st.middle_names.values.extend(["B", "C"])
    st.last_name.values.append("Lovelace")
    st.first_name.editors.append(ed)
    st.first_name.viewers.extend([vw, both])
    st.last_name.viewers.append(ed)
    st.middle_names.editors.append(both)
    st.last_name.editors.append(both)
    st.last_name.viewers.append(both)  # editor and viewer: an editor
    views = model.Views(st, st.SerializeToString())
    for caller in (owner, ed, vw, both, nobody, other):
        assert views.view(caller) == model.view(st, caller), caller
        assert views.can_see(caller) == model.can_see_user(st, caller), caller
    assert views.view(nobody) is views.view(other)  # strangers share one reply
    assert views.view(owner) is views.view(owner)
    assert views.access_of(both) == (model.VIEWER, model.EDITOR, model.EDITOR)
