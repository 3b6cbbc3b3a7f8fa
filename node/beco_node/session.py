"""Read sessions: the caller's identity bound once, then a MAC per read (pure).

A signed read costs the node an Ed25519 verification and a replay-cache entry. A session
moves that to one signed request, ``OpenSession`` (checked like any: signature, skew,
replay), and later reads cost an HMAC:

* the client sends a fresh X25519 public key in the signed ``OpenSessionRequest``;
* the node answers a fresh X25519 public key, a random 16-byte session id, the session's
  lifetime and its counter window;
* both derive ``key = HKDF-SHA256(X25519 shared secret, salt = transcript, info)`` where
  the transcript is SHA-256 over the user id, the session id, both X25519 keys and the
  open request's signature. The key never travels, so a session is safe over plaintext:
  an observer (or a node in the middle) learns neither key nor a way to make one;
* a read then carries ``SessionAuth`` = (session id, counter, MAC) with
  ``MAC = HMAC-SHA256(key, DOMAIN || method || 0 || session id || counter || digest)``,
  ``digest`` = SHA-256 of the request without ``auth`` and ``session`` (as for
  signatures, ``auth.body_digest``). The method is covered, so a MAC for one RPC is
  worthless for another.

The node accepts a read when the session is known and not expired, the MAC verifies, and
the counter is fresh: above the newest seen, or at most ``window`` below it and not seen
yet (reads in flight concurrently on one session may arrive out of order). The counter is
recorded only after the MAC verified, so a forger cannot burn counters. Sessions are
bounded: at most ``max_sessions`` per node (the least recently used goes first) and each
ends ``ttl_ms`` after it opened. A session the node does not know (evicted, expired, or
the node restarted) is refused with a message holding :data:`REOPEN`, which the client
library recognises: it opens a new session and sends the read again, once.

Pure: times are the caller's (the node passes its injectable monotonic clock);
randomness comes from the OS. Crypto from ``cryptography`` (X25519, HKDF) and the
standard library (HMAC-SHA256).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import Message

from beco_node import auth
from beco_node.errors import InvalidArgument, Unauthenticated
from beco_node.lru import BoundedLru

TRANSCRIPT_DOMAIN = b"beco-session-v1 transcript\x00"
KEY_INFO = b"beco-session-v1 read mac key"
MAC_DOMAIN = b"beco-session-v1 read\x00"
SESSION_ID_SIZE = 16
PUBLIC_KEY_SIZE = 32
MAC_SIZE = 32
MAX_COUNTER = 2**64 - 1
DEFAULT_TTL_MS = 10 * 60_000
DEFAULT_WINDOW = 1024
DEFAULT_MAX_SESSIONS = 50_000
# In every refusal that a new session cures; the client library looks for it.
REOPEN = "open a new session"
RESEND = "send the read again with a new counter"


def new_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key and its 32 raw public bytes."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def transcript(
    user_id: str, session_id: bytes, client_pub: bytes, node_pub: bytes, open_signature: bytes
) -> bytes:
    """SHA-256 of what both sides agree on: binds the key to this caller and this session."""
    return hashlib.sha256(
        b"".join(
            (
                TRANSCRIPT_DOMAIN,
                user_id.encode(),
                b"\x00",
                session_id,
                client_pub,
                node_pub,
                open_signature,
            )
        )
    ).digest()


def derive_key(
    private: X25519PrivateKey,
    peer_pub: bytes,
    user_id: str,
    session_id: bytes,
    client_pub: bytes,
    node_pub: bytes,
    open_signature: bytes,
) -> bytes:
    """The session's 32-byte MAC key (either side: its own private key, the other's public)."""
    if len(peer_pub) != PUBLIC_KEY_SIZE:
        raise InvalidArgument(f"an X25519 public key has {PUBLIC_KEY_SIZE} bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError:  # a low-order point: the shared secret would be all zero
        raise InvalidArgument("unusable X25519 public key (low order)") from None
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=transcript(user_id, session_id, client_pub, node_pub, open_signature),
        info=KEY_INFO,
    ).derive(shared)


def keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with a session's key and fed the domain, made once per session:
    each read copies it (keying an HMAC costs OpenSSL 3 more than the MAC of a read)."""
    return hmac.new(key, MAC_DOMAIN, hashlib.sha256)


def mac_with(
    keyed_mac: hmac.HMAC, method: str, session_id: bytes, counter: int, digest: bytes
) -> bytes:
    """:func:`mac` from the session's :func:`keyed` HMAC (which it leaves unchanged)."""
    h = keyed_mac.copy()
    h.update(b"".join((method.encode(), b"\x00", session_id, struct.pack(">Q", counter), digest)))
    return h.digest()


def mac(key: bytes, method: str, session_id: bytes, counter: int, digest: bytes) -> bytes:
    """HMAC-SHA256 of one read: its method, session, counter and body digest."""
    return mac_with(keyed(key), method, session_id, counter, digest)


@dataclass(slots=True)
class CounterWindow:
    """The counters seen on one session: the newest, and which of the ``size`` below it."""

    size: int = DEFAULT_WINDOW
    top: int = 0  # the newest counter accepted (0: none yet)
    bits: int = 0  # bit i set: counter top - i was accepted
    mask: int = field(init=False, repr=False)  # the low ``size`` bits (made once, not per read)

    def __post_init__(self) -> None:
        self.mask = (1 << self.size) - 1

    def accept(self, counter: int) -> None:
        """Record ``counter`` if fresh; raise Unauthenticated if used or too old."""
        if not 1 <= counter <= MAX_COUNTER:
            raise Unauthenticated(f"session counter {counter} out of range (1..2^64-1)")
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.top = counter
            return
        behind = self.top - counter
        if behind >= self.size:
            raise Unauthenticated(
                f"session counter {counter} is too old ({behind} behind the newest, window "
                f"{self.size}): {RESEND}"
            )
        if self.bits >> behind & 1:
            raise Unauthenticated("replayed request (session counter already used)")
        self.bits |= 1 << behind


@dataclass(slots=True)
class Session:
    id: bytes
    user_id: str
    key: bytes
    expires_ms: int
    window: CounterWindow = field(default_factory=CounterWindow)
    keyed_mac: hmac.HMAC = field(init=False, repr=False)  # keyed(key), copied per read

    def __post_init__(self) -> None:
        self.keyed_mac = keyed(self.key)


@dataclass(frozen=True)
class Opened:
    """What the node answers to an OpenSession."""

    session_id: bytes
    node_public_key: bytes
    ttl_ms: int
    window: int


class SessionTable:
    """A node's open sessions: bounded in number (least recently used out) and lifetime."""

    def __init__(
        self,
        ttl_ms: int = DEFAULT_TTL_MS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if ttl_ms <= 0 or max_sessions <= 0 or window <= 0:
            raise ValueError("ttl_ms, max_sessions and window must be positive")
        self.ttl_ms = ttl_ms
        self.max_sessions = max_sessions
        self.window = window
        # bounded by entries only (a session's size is fixed; docs/architecture.md)
        self._sessions: BoundedLru[bytes, Session] = BoundedLru(max_sessions, 2**62)
        self._expiry: deque[tuple[int, bytes]] = deque()  # opening order = expiry order

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, user_id: str, client_pub: bytes, open_signature: bytes, now_ms: int) -> Opened:
        """A new session for ``user_id``, whose signed OpenSession the caller verified."""
        if len(client_pub) != PUBLIC_KEY_SIZE:
            raise InvalidArgument(
                f"client_public_key must be {PUBLIC_KEY_SIZE} raw X25519 bytes, "
                f"got {len(client_pub)}"
            )
        private, node_pub = new_keypair()
        sid = os.urandom(SESSION_ID_SIZE)
        key = derive_key(private, client_pub, user_id, sid, client_pub, node_pub, open_signature)
        self._purge(now_ms)
        expires = now_ms + self.ttl_ms
        # the least recently used session goes when full
        self._sessions.put(sid, Session(sid, user_id, key, expires, CounterWindow(self.window)))
        self._expiry.append((expires, sid))
        return Opened(sid, node_pub, self.ttl_ms, self.window)

    def authenticate(
        self, method: str, session_id: bytes, counter: int, tag: bytes, digest: bytes, now_ms: int
    ) -> str:
        """The caller's user id for a read carrying (session id, counter, MAC); raise
        Unauthenticated otherwise."""
        s = self._sessions.get(session_id)
        if s is None:
            raise Unauthenticated(
                f"unknown session (expired, evicted or the node restarted): {REOPEN}"
            )
        if now_ms >= s.expires_ms:
            self._sessions.pop(session_id)
            raise Unauthenticated(f"session expired: {REOPEN}")
        if len(tag) != MAC_SIZE or not 1 <= counter <= MAX_COUNTER:
            raise Unauthenticated("malformed session auth (counter 1..2^64-1, 32-byte MAC)")
        if not hmac.compare_digest(mac_with(s.keyed_mac, method, session_id, counter, digest), tag):
            raise Unauthenticated("bad session MAC (wrong key, method, counter or body)")
        s.window.accept(counter)
        return s.user_id

    def _purge(self, now_ms: int) -> None:
        """Forget the sessions that expired (the deque may name some already evicted)."""
        exp = self._expiry
        while exp and exp[0][0] <= now_ms:
            self._sessions.pop(exp.popleft()[1])
        if len(exp) > 2 * self.max_sessions:  # entries of evicted sessions pile up: drop them
            self._expiry = deque(e for e in exp if e[1] in self._sessions)


def take(request: Message) -> tuple[bytes, int, bytes, bytes]:
    """The node's side of a session read: (session id, counter, MAC, body digest), with
    ``session`` cleared from ``request`` (which the handler owns)."""
    if request.HasField("auth"):
        raise Unauthenticated("a read carries auth (a signature) or session (a MAC), not both")
    s = request.session  # type: ignore[attr-defined]
    parts = (s.session_id, s.counter, s.mac)
    request.ClearField("session")
    return (*parts, hashlib.sha256(request.SerializeToString(deterministic=True)).digest())


class ClientSession:
    """The client's side of one session: its key and the next counter."""

    def __init__(self, session_id: bytes, key: bytes, ttl_ms: int, opened_at: float) -> None:
        self.id = session_id
        self.key = key
        self.ttl_ms = ttl_ms
        self.opened_at = opened_at  # the client's monotonic seconds when it opened
        self._counter = 0
        self._keyed = keyed(key)

    def next_counter(self) -> int:
        self._counter += 1
        return self._counter

    def seal(self, method: str, request: Message) -> None:
        """Fill ``request.session`` with a fresh counter and its MAC (no ``auth``)."""
        request.ClearField("auth")
        request.ClearField("session")
        digest = auth.body_digest(request)
        counter = self.next_counter()
        sa = request.session  # type: ignore[attr-defined]
        sa.session_id = self.id
        sa.counter = counter
        sa.mac = mac_with(self._keyed, method, self.id, counter, digest)

    def ending(self, now: float, margin_s: float = 30.0) -> bool:
        """Whether to re-open before the next read (the node's end is near or past)."""
        return now - self.opened_at >= max(self.ttl_ms / 1000 - margin_s, self.ttl_ms / 2000)


def client_key(
    private: X25519PrivateKey,
    client_pub: bytes,
    user_id: str,
    opened: Opened,
    open_signature: bytes,
) -> bytes:
    """The client's copy of the session key, from the node's answer."""
    if len(opened.session_id) != SESSION_ID_SIZE:
        raise InvalidArgument(f"a session id has {SESSION_ID_SIZE} bytes")
    return derive_key(
        private,
        opened.node_public_key,
        user_id,
        opened.session_id,
        client_pub,
        opened.node_public_key,
        open_signature,
    )
