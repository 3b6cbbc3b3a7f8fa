"""Read sessions (beco_node.session): the handshake's key agreement, the MAC, the counter
window, expiry and eviction on the manual clock."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, calls, keys, model, session
from beco_node.clock import ManualClock
from beco_node.errors import InvalidArgument, Unauthenticated
from beco_node.session import REOPEN, RESEND, ClientSession, CounterWindow, SessionTable

GET = model.SERVICE + "GetUser"
ALICE = "a1" * 16


def ms(clock: ManualClock) -> int:
    return int(clock.monotonic() * 1000)


def handshake(
    table: SessionTable, clock: ManualClock, user: str = ALICE, sig: bytes = b"s" * 64
) -> ClientSession:
    """Both sides of OpenSession, as the client library and the node do it."""
    private, pub = session.new_keypair()
    opened = table.open(user, pub, sig, ms(clock))
    key = session.client_key(private, pub, user, opened, sig)
    return ClientSession(opened.session_id, key, opened.ttl_ms, clock.monotonic())


def read(cs: ClientSession, uid: str = ALICE, method: str = GET) -> pb.GetUserRequest:
    req = pb.GetUserRequest(user_id=uid)
    cs.seal(method, req)
    return req


def check(
    table: SessionTable, clock: ManualClock, req: pb.GetUserRequest, method: str = GET
) -> str:
    copy = pb.GetUserRequest()
    copy.CopyFrom(req)  # the node clears `session` from the request it owns
    sid, counter, tag, digest = session.take(copy)
    return table.authenticate(method, sid, counter, tag, digest, ms(clock))


def test_both_sides_derive_the_same_key_and_the_read_names_its_caller() -> None:
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    assert len(cs.key) == 32
    assert check(table, clock, read(cs)) == ALICE
    assert check(table, clock, read(cs)) == ALICE


def test_the_key_is_bound_to_the_transcript() -> None:
    """Another user id or open signature on the client's side gives another key."""
    clock, table = ManualClock(), SessionTable()
    private, pub = session.new_keypair()
    opened = table.open(ALICE, pub, b"s" * 64, ms(clock))
    right = session.client_key(private, pub, ALICE, opened, b"s" * 64)
    assert session.client_key(private, pub, "b2" * 16, opened, b"s" * 64) != right
    assert session.client_key(private, pub, ALICE, opened, b"t" * 64) != right
    other_private, _ = session.new_keypair()
    assert session.client_key(other_private, pub, ALICE, opened, b"s" * 64) != right


def test_a_replayed_read_is_refused() -> None:
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    req = read(cs)
    check(table, clock, req)
    with pytest.raises(Unauthenticated, match="replayed"):
        check(table, clock, req)


def test_the_mac_is_hmac_sha256_of_the_documented_message() -> None:
    """The per-session keyed HMAC (copied per read) gives the MAC the protocol names, on both
    sides, read after read: clients and nodes of other versions must agree on it."""
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    for _ in range(3):
        req = read(cs)
        body = pb.GetUserRequest(user_id=ALICE)
        message = b"".join(
            (
                b"beco-session-v1 read\x00",
                GET.encode(),
                b"\x00",
                cs.id,
                req.session.counter.to_bytes(8, "big"),
                hashlib.sha256(body.SerializeToString(deterministic=True)).digest(),
            )
        )
        assert req.session.mac == hmac.digest(cs.key, message, "sha256")
        assert check(table, clock, req) == ALICE
    assert session.mac(cs.key, GET, cs.id, 7, b"d" * 32) == session.mac_with(
        session.keyed(cs.key), GET, cs.id, 7, b"d" * 32
    )


@pytest.mark.parametrize("change", ["body", "method", "counter", "mac"])
def test_tampering_breaks_the_mac(change: str) -> None:
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    req = read(cs)
    method = GET
    if change == "body":
        req.user_id = "b2" * 16
    elif change == "method":
        method = model.SERVICE + "GetHistory"
    elif change == "counter":
        req.session.counter += 1
    else:
        req.session.mac = bytes(32)
    with pytest.raises(Unauthenticated, match="bad session MAC"):
        check(table, clock, req, method)


def test_a_forged_read_does_not_burn_its_counter() -> None:
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    good = read(cs)
    forged = pb.GetUserRequest()
    forged.CopyFrom(good)
    forged.session.mac = bytes(32)
    with pytest.raises(Unauthenticated):
        check(table, clock, forged)
    assert check(table, clock, good) == ALICE


def test_wrong_session_and_another_callers_key_are_refused() -> None:
    """A stranger who knows Alice's session id but not her key cannot read as her."""
    clock, table = ManualClock(), SessionTable()
    alice = handshake(table, clock)
    mallory = handshake(table, clock, user="c3" * 16)
    stolen = ClientSession(alice.id, mallory.key, alice.ttl_ms, 0)
    with pytest.raises(Unauthenticated, match="bad session MAC"):
        check(table, clock, read(stolen))
    unknown = ClientSession(b"x" * 16, alice.key, alice.ttl_ms, 0)
    with pytest.raises(Unauthenticated, match=REOPEN):
        check(table, clock, read(unknown))
    assert check(table, clock, read(mallory)) == "c3" * 16


def test_auth_and_session_together_are_refused() -> None:
    clock, table = ManualClock(), SessionTable()
    cs = handshake(table, clock)
    req = read(cs)
    req.auth.nonce = b"n" * 16
    with pytest.raises(Unauthenticated, match="not both"):
        check(table, clock, req)


def test_sessions_expire_on_the_clock() -> None:
    clock, table = ManualClock(), SessionTable(ttl_ms=60_000)
    cs = handshake(table, clock)
    clock.advance(59.9)
    check(table, clock, read(cs))
    assert cs.ending(clock.monotonic())  # the client re-opens before the node's end
    clock.advance(0.1)
    with pytest.raises(Unauthenticated, match=f"expired: {REOPEN}"):
        check(table, clock, read(cs))
    with pytest.raises(Unauthenticated, match=REOPEN):  # and it is gone
        check(table, clock, read(cs))
    assert len(table) == 0


def test_expired_sessions_are_purged_when_others_open() -> None:
    clock, table = ManualClock(), SessionTable(ttl_ms=1000)
    for _ in range(5):
        handshake(table, clock)
    clock.advance(1)
    handshake(table, clock)
    assert len(table) == 1


def test_the_least_recently_used_session_is_evicted_at_the_bound() -> None:
    clock, table = ManualClock(), SessionTable(max_sessions=3)
    a, b, c = (handshake(table, clock) for _ in range(3))
    check(table, clock, read(a))  # a is now the most recently used; b the least
    d = handshake(table, clock)
    assert len(table) == 3
    with pytest.raises(Unauthenticated, match=REOPEN):
        check(table, clock, read(b))
    for s in (a, c, d):
        check(table, clock, read(s))


def test_many_sessions_stay_bounded() -> None:
    clock, table = ManualClock(), SessionTable(ttl_ms=10_000, max_sessions=10)
    for _ in range(100):
        handshake(table, clock)
        clock.advance(0.01)
    assert len(table) == 10
    assert len(table._expiry) <= 2 * 10 + 1


def test_concurrent_reads_arrive_out_of_order_within_the_window() -> None:
    """Reads in flight together on one session: counters taken in order, arriving shuffled."""
    clock, table = ManualClock(), SessionTable(window=64)
    cs = handshake(table, clock)
    reqs = [read(cs) for _ in range(50)]
    order = [*reqs[25:], *reversed(reqs[:25])]
    for r in order:
        assert check(table, clock, r) == ALICE
    for r in (reqs[0], reqs[30], reqs[-1]):  # each counter once only
        with pytest.raises(Unauthenticated, match="replayed"):
            check(table, clock, r)


def test_a_counter_below_the_window_is_refused_with_the_resend_hint() -> None:
    clock, table = ManualClock(), SessionTable(window=8)
    cs = handshake(table, clock)
    late = read(cs)  # counter 1
    for _ in range(8):
        check(table, clock, read(cs))  # counters 2..9: 1 is now 8 behind
    with pytest.raises(Unauthenticated, match=RESEND):
        check(table, clock, late)


@pytest.mark.parametrize("size", [1, 8, 1024])
def test_counter_window_accepts_each_counter_once(size: int) -> None:
    w = CounterWindow(size)
    seen: set[int] = set()
    for c in [5, 3, 9, 9 + size, 4 + size, 2 * size + 20, 2 * size + 19, 1]:
        fresh = c not in seen and c > w.top - size
        if fresh:
            w.accept(c)
            seen.add(c)
        else:
            with pytest.raises(Unauthenticated):
                w.accept(c)
    with pytest.raises(Unauthenticated, match="out of range"):
        w.accept(0)


def test_a_bad_client_key_is_invalid_argument() -> None:
    clock, table = ManualClock(), SessionTable()
    with pytest.raises(InvalidArgument, match="32 raw X25519 bytes"):
        table.open(ALICE, b"short", b"s" * 64, ms(clock))
    with pytest.raises(InvalidArgument, match="low order"):
        table.open(ALICE, bytes(32), b"s" * 64, ms(clock))  # the all-zero point


def test_session_reads_are_exactly_the_reads() -> None:
    """Every unary Identity method is a signed write, a read that takes a session, or
    OpenSession (``Calls`` only carries them); no write request can carry a session."""
    methods = {
        model.SERVICE + m.name
        for m in pb.DESCRIPTOR.services_by_name["Identity"].methods
        if not (m.client_streaming or m.server_streaming)
    }
    assert methods == calls.CLIENT_CALLS.methods
    assert model.SESSION_READS | set(model.MUTATIONS) | {model.OPEN_SESSION} == methods
    assert not model.SESSION_READS & set(model.MUTATIONS)
    assert "/beco.v1.Identity/GetUser" in model.SESSION_READS
    for m in model.MUTATIONS.values():
        assert "session" not in m.request_type.DESCRIPTOR.fields_by_name


def test_a_session_read_digest_matches_the_signed_one() -> None:
    """The MAC covers the same body digest a signature would (auth and session cleared)."""
    cs = ClientSession(b"i" * 16, b"k" * 32, 60_000, 0)
    req = read(cs)
    signed = pb.GetUserRequest(user_id=ALICE)
    auth.sign_request(GET, signed, keys.generate_private_key(), 1)
    assert session.take(req)[3] == auth.body_digest(signed)
