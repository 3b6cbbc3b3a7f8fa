"""The identity domain: user state, permissions, and the pure state transition.

A user has three fields (first name, middle names, last name). The owner of
every field is the user itself; per field it may name *editors* (may change the
value and grant or revoke access) and *viewers* (may read). Editors may read.

What a caller sees (``view``):
- the owner and editors of a field: its value and access lists;
- a viewer: the value, not the access lists;
- anyone else, including an authenticated caller with no relation to the user:
  only that the user exists (user id, public key, sequence) and, per field,
  ``readable = false``; no value, no access lists. There are no anonymous
  callers: every request is signed (auth.py).

``apply`` is the one state transition. The origin user node runs it to check a
request before proposing, every voting user node runs it against its own copy,
and the SST runs it again to compute the state it stores, so a change commits
only if a quorum of nodes and the SST agree it is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from beco.v1 import identity_pb2 as pb
from google.protobuf.message import Message

from beco_node import limits
from beco_node.errors import (
    AlreadyExists,
    BecoError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

SERVICE = "/beco.v1.Identity/"
CREATE_USER = SERVICE + "CreateUser"
UPDATE_FIRST = SERVICE + "UpdateFirstName"
UPDATE_MIDDLE = SERVICE + "UpdateMiddleNames"
UPDATE_LAST = SERVICE + "UpdateLastName"
GRANT = SERVICE + "GrantAccess"
REVOKE = SERVICE + "RevokeAccess"


@dataclass(frozen=True)
class MutationKind:
    kind: str
    request_type: type[Message]


MUTATIONS: dict[str, MutationKind] = {
    CREATE_USER: MutationKind("create_user", pb.CreateUserRequest),
    UPDATE_FIRST: MutationKind("set_first_name", pb.UpdateFirstNameRequest),
    UPDATE_MIDDLE: MutationKind("set_middle_names", pb.UpdateMiddleNamesRequest),
    UPDATE_LAST: MutationKind("set_last_name", pb.UpdateLastNameRequest),
    GRANT: MutationKind("grant", pb.AccessRequest),
    REVOKE: MutationKind("revoke", pb.AccessRequest),
}

OPEN_SESSION = SERVICE + "OpenSession"
# The reads that may carry a session MAC instead of a signature: every method whose request
# has a ``session`` field (derived from the API, so a new read cannot be forgotten).
SESSION_READS: frozenset[str] = frozenset(
    SERVICE + m.name
    for m in pb.DESCRIPTOR.services_by_name["Identity"].methods
    if "session" in m.input_type.fields_by_name
)

FIELD_ATTR: dict[int, str] = {
    pb.FIELD_FIRST_NAME: "first_name",
    pb.FIELD_MIDDLE_NAMES: "middle_names",
    pb.FIELD_LAST_NAME: "last_name",
}
OWNER, EDITOR, VIEWER = "owner", "editor", "viewer"


def parse_mutation(method: str, data: bytes) -> Message:
    mk = MUTATIONS.get(method)
    if mk is None:
        raise InvalidArgument(f"{method!r} is not a mutation")
    msg = mk.request_type()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError and friends: bad bytes from a peer
        raise InvalidArgument(f"undecodable {mk.kind} request: {exc}") from None
    return msg


def field_state(state: pb.UserState, field: int) -> pb.FieldState:
    attr = FIELD_ATTR.get(field)
    if attr is None:
        raise InvalidArgument(f"unknown field {field}")
    fs: pb.FieldState = getattr(state, attr)
    return fs


def access_of(state: pb.UserState, field: int, caller: str) -> str | None:
    if caller == state.user_id:
        return OWNER
    fs = field_state(state, field)
    if caller in fs.editors:
        return EDITOR
    if caller in fs.viewers:
        return VIEWER
    return None


def can_read(state: pb.UserState, field: int, caller: str) -> bool:
    return access_of(state, field, caller) is not None


def can_write(state: pb.UserState, field: int, caller: str) -> bool:
    return access_of(state, field, caller) in (OWNER, EDITOR)


def can_see_user(state: pb.UserState, caller: str) -> bool:
    """Whether ``caller`` may read at least one field (used by ListUsers)."""
    return any(can_read(state, f, caller) for f in FIELD_ATTR)


def _field_view(state: pb.UserState, field: int, caller: str, out: pb.FieldView) -> None:
    acc = access_of(state, field, caller)
    out.owner = state.user_id
    if acc is None:
        return
    fs = field_state(state, field)
    out.readable = True
    out.values.extend(fs.values)
    out.caller_is_owner = acc == OWNER
    out.caller_access = pb.ACCESS_VIEWER if acc == VIEWER else pb.ACCESS_EDITOR
    if acc in (OWNER, EDITOR):
        out.editors.extend(fs.editors)
        out.viewers.extend(fs.viewers)


def view(state: pb.UserState, caller: str) -> pb.User:
    user = pb.User(user_id=state.user_id, public_key=state.public_key, sequence=state.sequence)
    _field_view(state, pb.FIELD_FIRST_NAME, caller, user.first_name)
    _field_view(state, pb.FIELD_MIDDLE_NAMES, caller, user.middle_names)
    _field_view(state, pb.FIELD_LAST_NAME, caller, user.last_name)
    return user


Access = tuple[str | None, str | None, str | None]  # the caller's access per field
NO_ACCESS: Access = (None, None, None)
OWNER_ACCESS: Access = (OWNER, OWNER, OWNER)
MAX_VIEWS = 8  # distinct views cached per state (beyond: built per read)


class Views:
    """The views of one stored state, by the caller's access per field (pure).

    A view depends only on the state and on what the caller may do with each field, so
    every caller with the same access gets the same message: built once, then shared. The
    user node caches one per user (its ``data``: the stored bytes it was built from).
    Returned messages must not be changed (gRPC serialises them; appends copy them)."""

    def __init__(self, state: pb.UserState, data: bytes) -> None:
        self.state = state
        self.data = data
        acc: dict[str, list[str | None]] = {}
        for i, attr in enumerate(FIELD_ATTR.values()):
            fs: pb.FieldState = getattr(state, attr)
            for who, role in ((w, VIEWER) for w in fs.viewers):
                acc.setdefault(who, [None, None, None])[i] = role
            for who in fs.editors:  # an editor who is also listed as viewer is an editor
                acc.setdefault(who, [None, None, None])[i] = EDITOR
        self.access: dict[str, Access] = {w: (a[0], a[1], a[2]) for w, a in acc.items()}
        self._views: dict[Access, pb.User] = {}

    def access_of(self, caller: str) -> Access:
        if caller == self.state.user_id:
            return OWNER_ACCESS
        return self.access.get(caller, NO_ACCESS)

    def can_see(self, caller: str) -> bool:
        """Whether ``caller`` may read at least one field (``can_see_user``)."""
        return self.access_of(caller) != NO_ACCESS

    def view(self, caller: str) -> pb.User:
        """``view(state, caller)``, shared by the callers with the same access."""
        key = self.access_of(caller)
        v = self._views.get(key)
        if v is None:
            v = view(self.state, caller)
            if len(self._views) < MAX_VIEWS:
                self._views[key] = v
        return v

    def size(self) -> int:
        """Bytes held, about (a bound for the cache: the views it may still build)."""
        return (len(self.data) + 400) * (2 + MAX_VIEWS) + 200 * len(self.access)


def target_user(method: str, request: Message, caller: str) -> str:
    if method == CREATE_USER:
        return caller
    uid: str = request.user_id  # type: ignore[attr-defined]
    return uid


def canonicalise_names(request: Message) -> None:
    """Put the names of a request in their PRECIS canonical form, in place (clients, before
    signing). A name with no canonical form is left as is: the node refuses it with the reason."""
    for attr in ("first_name", "last_name"):
        value = getattr(request, attr, None)
        if value:
            try:
                setattr(request, attr, limits.canonical_name(attr, value))
            except InvalidArgument:
                pass
    middle = getattr(request, "middle_names", None)
    if middle is not None:
        out = []
        for v in middle:
            try:
                out.append(limits.canonical_name("middle name", v) if v else v)
            except InvalidArgument:
                out.append(v)
        del middle[:]
        middle.extend(out)


def check_limits(method: str, request: Message) -> None:
    """Input validation that does not need the user's state."""
    if method == CREATE_USER:
        assert isinstance(request, pb.CreateUserRequest)
        limits.check_name("first_name", request.first_name, allow_empty=True)
        limits.check_middle_names(request.middle_names)
        limits.check_name("last_name", request.last_name, allow_empty=True)
        return
    limits.check_user_id("user_id", request.user_id)  # type: ignore[attr-defined]
    if isinstance(request, pb.UpdateFirstNameRequest):
        limits.check_name("first_name", request.first_name, allow_empty=True)
    elif isinstance(request, pb.UpdateLastNameRequest):
        limits.check_name("last_name", request.last_name, allow_empty=True)
    elif isinstance(request, pb.UpdateMiddleNamesRequest):
        limits.check_middle_names(request.middle_names)
    elif isinstance(request, pb.AccessRequest):
        if request.field not in FIELD_ATTR:
            raise InvalidArgument("field must be first_name, middle_names or last_name")
        if request.access not in (pb.ACCESS_VIEWER, pb.ACCESS_EDITOR):
            raise InvalidArgument("access must be viewer or editor")
        limits.check_user_id("grantee", request.grantee)
        if request.grantee == request.user_id:
            raise InvalidArgument("the owner always has full access to its own fields")


def apply(
    method: str,
    request: Message,
    caller: str,
    state: pb.UserState | None,
    sequence: int,
    ts_ms: int,
) -> pb.UserState:
    """The user's new state after ``request`` at ``sequence``; raises a BecoError if refused."""
    check_limits(method, request)
    if method == CREATE_USER:
        assert isinstance(request, pb.CreateUserRequest)
        if state is not None:
            raise AlreadyExists(f"user {caller} already exists")
        if sequence != 1:
            raise FailedPrecondition(f"a new user starts at sequence 1, got {sequence}")
        new = pb.UserState(
            user_id=caller,
            public_key=request.auth.public_key,
            sequence=1,
            created_ms=ts_ms,
            updated_ms=ts_ms,
        )
        if request.first_name:
            new.first_name.values.append(request.first_name)
        new.middle_names.values.extend(request.middle_names)
        if request.last_name:
            new.last_name.values.append(request.last_name)
        return new
    uid = target_user(method, request, caller)
    if state is None:
        raise NotFound(f"no user {uid}")
    if sequence != state.sequence + 1:
        raise FailedPrecondition(
            f"wrong sequence for user {uid}: expected {state.sequence + 1}, got {sequence}"
        )
    expected = request.expected_sequence  # type: ignore[attr-defined]
    if expected and expected != state.sequence:
        raise FailedPrecondition(
            f"user {uid} is at sequence {state.sequence}, the request expected {expected}"
        )
    new = pb.UserState()
    new.CopyFrom(state)
    new.sequence = sequence
    new.updated_ms = ts_ms
    if isinstance(request, pb.AccessRequest):
        _check_write(state, request.field, caller, "change access to")
        fs = field_state(new, request.field)
        lst = fs.editors if request.access == pb.ACCESS_EDITOR else fs.viewers
        role = "editor" if request.access == pb.ACCESS_EDITOR else "viewer"
        if method == GRANT:
            if request.grantee in lst:
                raise FailedPrecondition(f"{request.grantee} is already {role}")
            granted = len(fs.editors) + len(fs.viewers)
            if granted >= limits.MAX_GRANTEES_PER_FIELD:
                raise BecoError(
                    f"{FIELD_ATTR[request.field]} of user {uid} already has {granted} editors "
                    f"and viewers, at most {limits.MAX_GRANTEES_PER_FIELD}: revoke one first",
                    "RESOURCE_EXHAUSTED",
                )
            lst.append(request.grantee)
        else:
            if request.grantee not in lst:
                raise FailedPrecondition(f"{request.grantee} is not {role}")
            lst.remove(request.grantee)
        return new
    if isinstance(request, pb.UpdateFirstNameRequest):
        _check_write(state, pb.FIELD_FIRST_NAME, caller, "change")
        _set(new.first_name, [request.first_name] if request.first_name else [])
    elif isinstance(request, pb.UpdateLastNameRequest):
        _check_write(state, pb.FIELD_LAST_NAME, caller, "change")
        _set(new.last_name, [request.last_name] if request.last_name else [])
    elif isinstance(request, pb.UpdateMiddleNamesRequest):
        _check_write(state, pb.FIELD_MIDDLE_NAMES, caller, "change")
        _set(new.middle_names, list(request.middle_names))
    else:  # pragma: no cover - MUTATIONS covers every method
        raise InvalidArgument(f"unsupported mutation {method}")
    return new


def _set(fs: pb.FieldState, values: list[str]) -> None:
    del fs.values[:]
    fs.values.extend(values)


def _check_write(state: pb.UserState, field: int, caller: str, verb: str) -> None:
    if not can_write(state, field, caller):
        raise PermissionDenied(
            f"{caller} may not {verb} {FIELD_ATTR[field]} of user {state.user_id} "
            "(only the owner and editors may)"
        )
