"""Client request authentication: canonical bytes, signatures, skew and replays.

Every public request carries ``auth`` (a ``RequestAuth``). The caller signs::

    b"beco-request-v1\\0" || method || b"\\0" || public_key (32)
      || timestamp_ms (int64, big-endian) || len(nonce) (1 byte) || nonce
      || SHA-256(deterministic protobuf serialisation of the request with `auth` cleared)

``method`` is the full gRPC method name (``/beco.v1.Identity/UpdateFirstName``),
so a signature for one method can never be replayed against another. The
caller's user id is ``keys.peer_id(public_key)``; nobody can act as a user
without its private key. A node accepts a request when the signature verifies,
the timestamp is within ``skew`` of its clock, and the (key, nonce) pair has
not been seen within the replay window (``2 * skew``: older requests are stale
anyway). The nonce is recorded only after the signature verified, so a forger
cannot poison the cache.

Pure apart from reading the clock passed in.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections import deque

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from beco_node import keys
from beco_node.errors import Unauthenticated, Unavailable

DOMAIN = b"beco-request-v1\x00"
DEFAULT_SKEW_MS = 30_000
# Clock differences between nodes and the validator's commit retries, on top of 2 x skew.
EXPIRY_MARGIN_MS = 60_000
MIN_NONCE = 16
MAX_NONCE = 64


def admission_horizon_ms(skew_ms: int) -> int:
    """How long after its signed timestamp a request can still commit.

    A voter accepts the validator's timestamp within ``skew_ms`` of its clock, and the
    request only if signed within ``skew_ms`` of that timestamp: later than
    ``2 * skew_ms`` (plus the margin) after it was signed, no honest quorum votes for it,
    so it can never commit.
    """
    return 2 * skew_ms + EXPIRY_MARGIN_MS


def body_digest(request: Message) -> bytes:
    """SHA-256 of the request without its ``auth`` field (deterministic encoding)."""
    if request.HasField("auth"):
        body = type(request)()
        body.CopyFrom(request)
        body.ClearField("auth")
    else:
        body = request
    return hashlib.sha256(body.SerializeToString(deterministic=True)).digest()


def signing_bytes(
    method: str, public_key: bytes, timestamp_ms: int, nonce: bytes, digest: bytes
) -> bytes:
    return b"".join(
        (
            DOMAIN,
            method.encode(),
            b"\x00",
            public_key,
            struct.pack(">q", timestamp_ms),
            bytes([len(nonce)]),
            nonce,
            digest,
        )
    )


def sign_request(
    method: str,
    request: Message,
    private_key: Ed25519PrivateKey,
    now_ms: int,
    nonce: bytes | None = None,
) -> None:
    """Fill ``request.auth`` in place (the client side)."""
    nonce = nonce if nonce is not None else os.urandom(16)
    pub = keys.public_key_bytes(private_key)
    digest = body_digest(request)
    auth = request.auth  # type: ignore[attr-defined]
    auth.public_key = pub
    auth.timestamp_ms = now_ms
    auth.nonce = nonce
    auth.signature = keys.sign(private_key, signing_bytes(method, pub, now_ms, nonce, digest))


def verify_signature(method: str, request: Message) -> str:
    """Check the request's signature only; return the caller's user id."""
    if not request.HasField("auth"):
        raise Unauthenticated("the request carries no auth (signature, timestamp, nonce)")
    auth = request.auth  # type: ignore[attr-defined]
    if len(auth.public_key) != keys.PUBLIC_KEY_SIZE:
        raise Unauthenticated(f"auth.public_key must be {keys.PUBLIC_KEY_SIZE} bytes")
    if not MIN_NONCE <= len(auth.nonce) <= MAX_NONCE:
        raise Unauthenticated(f"auth.nonce must be {MIN_NONCE}..{MAX_NONCE} bytes")
    msg = signing_bytes(
        method, auth.public_key, auth.timestamp_ms, auth.nonce, body_digest(request)
    )
    if not keys.verify(auth.public_key, auth.signature, msg):
        raise Unauthenticated("bad request signature (or an unusable, small-order public key)")
    return keys.peer_id(auth.public_key)


def check_sequenced_in_time(request: Message, validator_ts_ms: int, skew_ms: int) -> None:
    """Refuse a request the validator sequenced long after the client signed it.

    The origin checks a request's timestamp against its own clock, but a signed request
    that was never committed could otherwise be handed to the validator much later (by a
    faulty node) and undo what its author did since. Voters and the SST call this on the
    proposal, so a stale request cannot gather an honest quorum.
    """
    ts = request.auth.timestamp_ms  # type: ignore[attr-defined]
    if abs(validator_ts_ms - ts) > skew_ms:
        raise Unauthenticated(
            f"request signed {abs(validator_ts_ms - ts)} ms away from when it was sequenced "
            f"(allowed {skew_ms} ms)"
        )


def check_validator_clock(
    request: Message, validator_ts_ms: int, now_ms: int, skew_ms: int
) -> None:
    """A voter's time checks on a proposal, blaming the clock that is off.

    The validator's timestamp must be within ``skew_ms`` of the voter's clock, and the
    request signed within ``skew_ms`` of when it was sequenced. When the second check
    fails but the request's timestamp agrees with the voter's clock, the client is fine
    and the validator's clock is the odd one: UNAVAILABLE naming the validator's clock,
    not UNAUTHENTICATED blaming the client.
    """
    off = validator_ts_ms - now_ms
    if abs(off) > skew_ms:
        raise Unavailable(
            f"validator clock skew: the validator's clock is {off} ms off this voter's "
            f"(allowed {skew_ms} ms); the request was not refused for the client's fault"
        )
    try:
        check_sequenced_in_time(request, validator_ts_ms, skew_ms)
    except Unauthenticated:
        signed = request.auth.timestamp_ms  # type: ignore[attr-defined]
        if abs(now_ms - signed) <= skew_ms:
            raise Unavailable(
                f"validator clock skew: the request was signed {signed - now_ms} ms from "
                f"this voter's clock but sequenced {validator_ts_ms - signed} ms after it "
                f"by the validator (allowed {skew_ms} ms)"
            ) from None
        raise


class ReplayCache:
    """Remembers (public key, nonce) pairs, each with a value (the request's signature),
    for ``window_ms``; bounded in size."""

    def __init__(self, window_ms: int, max_entries: int = 200_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: dict[bytes, bytes] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, key: bytes, now_ms: int) -> bool:
        """True if ``key`` is fresh (and now remembered), False if it is a replay."""
        return self.remember(key, b"", now_ms) is None

    def remember(self, key: bytes, value: bytes, now_ms: int) -> bytes | None:
        """The value remembered for ``key`` if seen in the window; else remember ``value``
        and return None."""
        self._purge(now_ms)
        prev = self._seen.get(key)
        if prev is not None:
            return prev
        if len(self._seen) >= self.max_entries:
            # Full: refuse rather than forget (forgetting would allow replays). The node is
            # overloaded, not the client at fault.
            raise Unavailable("this node's replay cache is full (overloaded), retry shortly")
        self._seen[key] = value
        self._order.append((now_ms + self.window_ms, key))
        return None

    def _purge(self, now_ms: int) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] <= now_ms:
            seen.pop(order.popleft()[1], None)


class Admission(enum.Enum):
    FRESH = "fresh"  # first time seen, timestamp within the skew
    RESENT = "resent"  # the same signed request again, within the skew
    EXPIRED = "expired"  # signed more than the skew ago
    EARLY = "early"  # signed more than the skew in the future


class Authenticator:
    """Full check of a public request: signature, timestamp skew, replay."""

    def __init__(self, skew_ms: int = DEFAULT_SKEW_MS) -> None:
        self.skew_ms = skew_ms
        self.replays = ReplayCache(2 * skew_ms)

    def authenticate(self, method: str, request: Message, now_ms: int) -> str:
        caller, admission = self.admit(method, request, now_ms)
        if admission is Admission.RESENT:
            raise Unauthenticated("replayed request (nonce already used)")
        if admission is not Admission.FRESH:
            raise Unauthenticated(self.skew_message(request, now_ms))
        return caller

    def skew_message(self, request: Message, now_ms: int) -> str:
        ts = request.auth.timestamp_ms  # type: ignore[attr-defined]
        return (
            f"request timestamp is {abs(now_ms - ts)} ms away from the "
            f"node's clock (allowed {self.skew_ms} ms)"
        )

    def admit(self, method: str, request: Message, now_ms: int) -> tuple[str, Admission]:
        """Check the signature and classify a request by its timestamp and nonce.

        A nonce seen before with another signature is a replay (refused); with the same
        signature it is the same request sent again (``RESENT``): a write's sender
        re-sends it to learn its outcome, which must never apply it twice.
        """
        caller = verify_signature(method, request)
        auth = request.auth  # type: ignore[attr-defined]
        if now_ms - auth.timestamp_ms > self.skew_ms:
            return caller, Admission.EXPIRED
        if auth.timestamp_ms - now_ms > self.skew_ms:
            return caller, Admission.EARLY
        prev = self.replays.remember(auth.public_key + auth.nonce, auth.signature, now_ms)
        if prev is None:
            return caller, Admission.FRESH
        if prev == auth.signature:
            return caller, Admission.RESENT
        raise Unauthenticated("replayed request (nonce already used)")
