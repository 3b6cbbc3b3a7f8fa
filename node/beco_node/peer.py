"""Node-to-node security: signed envelopes, votes and quorum certificates.

Every message between nodes travels in a ``PeerEnvelope`` signed with the
sender's Ed25519 peer key (the key whose public half is in the membership)::

    b"beco-peer-v1\\0" || kind || b"\\0" || sender || b"\\0" || timestamp_ms (int64 BE)
      || SHA-256(payload)

The receiver looks the sender up in the *current* membership, checks that its
role may send that kind of message, that the timestamp is within the allowed
skew, and the signature. Unknown peers, peers removed from the membership and
peers of the wrong role are refused (PERMISSION_DENIED / UNAUTHENTICATED).
This holds with or without TLS on the transport.

Votes are signed separately so that the validator can forward them to the SST
inside a quorum certificate::

    b"beco-vote-v1\\0" || proposal digest (32) || verdict (1 byte) || reason

The proposal digest is SHA-256 over ``b"beco-proposal-v1\\0"`` and the
deterministic serialisation of the ``ProposalHeader`` (proposal, sequence,
validator timestamp). The SST commits only if the certificate holds at least
``quorum`` VALID votes from distinct current user-node members, all over the
same digest.

Pure (no I/O).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable

from beco.v1 import peer_pb2 as ppb
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from beco_node import keys
from beco_node.errors import BecoError, PermissionDenied, Unauthenticated
from beco_node.membership import Member, Membership

ENVELOPE_DOMAIN = b"beco-peer-v1\x00"
VOTE_DOMAIN = b"beco-vote-v1\x00"
PROPOSAL_DOMAIN = b"beco-proposal-v1\x00"
DEFAULT_PEER_SKEW_MS = 60_000

# Called with (sender name, sender's clock minus ours in ms, transit included) for every
# envelope that verified: the runtime exports it as beco_peer_clock_offset_seconds.
CLOCK_OFFSET_OBSERVERS: list[Callable[[str, int], None]] = []

# Which roles may send which kind of message.
ALLOWED_SENDERS: dict[str, frozenset[str]] = {
    "peer_record": frozenset({"rendezvous", "validator", "user", "sst"}),
    "discover": frozenset({"rendezvous", "validator", "user", "sst"}),
    "propose": frozenset({"user"}),
    "vote_request": frozenset({"validator"}),
    "commit": frozenset({"validator"}),
    "applied": frozenset({"sst"}),
    "sst_query": frozenset({"validator", "user"}),
    "record_failure": frozenset({"validator", "user"}),
}


def envelope_signing_bytes(kind: str, sender: str, timestamp_ms: int, payload: bytes) -> bytes:
    return b"".join(
        (
            ENVELOPE_DOMAIN,
            kind.encode(),
            b"\x00",
            sender.encode(),
            b"\x00",
            struct.pack(">q", timestamp_ms),
            hashlib.sha256(payload).digest(),
        )
    )


def seal(
    kind: str, payload: Message | bytes, key: Ed25519PrivateKey, sender: str, now_ms: int
) -> ppb.PeerEnvelope:
    data = payload if isinstance(payload, bytes) else payload.SerializeToString(deterministic=True)
    sig = key.sign(envelope_signing_bytes(kind, sender, now_ms, data))
    return ppb.PeerEnvelope(
        sender=sender, kind=kind, timestamp_ms=now_ms, payload=data, signature=sig
    )


def open_envelope(
    env: ppb.PeerEnvelope,
    kind: str,
    membership: Membership,
    now_ms: int,
    skew_ms: int = DEFAULT_PEER_SKEW_MS,
) -> Member:
    """Check an envelope; return the sending member."""
    if env.kind != kind:
        raise PermissionDenied(f"expected a {kind!r} message, got {env.kind!r}")
    member = membership.by_peer_id(env.sender)
    if member is None:
        raise PermissionDenied(f"peer {env.sender[:40]!r} is not in the membership")
    if member.role not in ALLOWED_SENDERS.get(kind, frozenset()):
        raise PermissionDenied(f"a {member.role} node may not send {kind!r} messages")
    if abs(now_ms - env.timestamp_ms) > skew_ms:
        raise Unauthenticated(
            f"clock skew between nodes: the timestamp of {member.name}'s message is "
            f"{env.timestamp_ms - now_ms} ms "
            f"off this node's clock (allowed {skew_ms} ms)"
        )
    msg = envelope_signing_bytes(kind, env.sender, env.timestamp_ms, env.payload)
    if not keys.verify(member.public_key, env.signature, msg):
        raise Unauthenticated(f"bad signature from peer {member.name}")
    for observe in CLOCK_OFFSET_OBSERVERS:
        observe(member.name, env.timestamp_ms - now_ms)
    return member


def parse(msg_type: type[Message], data: bytes) -> Message:
    msg = msg_type()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        raise BecoError(f"undecodable {msg_type.__name__}: {exc}", "INVALID_ARGUMENT") from None
    return msg


def header_digest(header: ppb.ProposalHeader) -> bytes:
    return hashlib.sha256(PROPOSAL_DOMAIN + header.SerializeToString(deterministic=True)).digest()


def vote_signing_bytes(digest: bytes, verdict: int, reason: str) -> bytes:
    return VOTE_DOMAIN + digest + bytes([verdict & 0xFF]) + reason.encode()


def sign_vote(
    digest: bytes, verdict: int, reason: str, code: str, key: Ed25519PrivateKey, voter: str
) -> ppb.Vote:
    sig = key.sign(vote_signing_bytes(digest, verdict, reason))
    return ppb.Vote(
        digest=digest,
        voter=voter,
        verdict=verdict,  # type: ignore[arg-type]
        reason=reason,
        signature=sig,
        code=code,
    )


def vote_is_from(vote: ppb.Vote, member: Member, digest: bytes) -> bool:
    """Cheap consistency check (no signature): the vote names ``member`` and ``digest``."""
    return vote.voter == member.peer_id and vote.digest == digest


def verify_vote(vote: ppb.Vote, membership: Membership, digest: bytes) -> Member:
    member = membership.by_peer_id(vote.voter)
    if member is None or member.role != "user":
        raise PermissionDenied(f"vote from {vote.voter[:40]!r}, not a user node of the membership")
    if vote.digest != digest:
        raise PermissionDenied(f"vote from {member.name} is for another proposal")
    if not keys.verify(
        member.public_key,
        vote.signature,
        vote_signing_bytes(vote.digest, vote.verdict, vote.reason),
    ):
        raise Unauthenticated(f"bad vote signature from {member.name}")
    return member


def verify_quorum_certificate(
    qc: ppb.QuorumCertificate, membership: Membership, expected_sequence: int
) -> list[str]:
    """Check a certificate; return the peer ids of its VALID voters."""
    header = qc.header
    if header.sequence != expected_sequence:
        raise BecoError(
            f"wrong sequence for user {header.proposal.user_id}: expected {expected_sequence}, "
            f"got {header.sequence}",
            "FAILED_PRECONDITION",
        )
    digest = header_digest(header)
    voters: list[str] = []
    seen: set[str] = set()
    for vote in qc.votes:
        member = verify_vote(vote, membership, digest)
        if member.peer_id in seen:
            raise PermissionDenied(f"two votes from {member.name} in one certificate")
        seen.add(member.peer_id)
        if vote.verdict == ppb.VERDICT_VALID:
            voters.append(member.peer_id)
    if len(voters) < membership.quorum:
        raise PermissionDenied(
            f"quorum certificate has {len(voters)} valid votes, the quorum is {membership.quorum}"
        )
    return voters


def proposal_id(request_signature: bytes) -> str:
    return hashlib.sha256(request_signature).hexdigest()


def peer_record_ok(record: ppb.PeerRecord, member: Member) -> bool:
    return record.peer_id == member.peer_id and record.role == member.role


def distinct(ids: Iterable[str]) -> bool:
    lst = list(ids)
    return len(lst) == len(set(lst))
