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
inside a batch certificate: one signature per voter per batch, over the Merkle root of
the batch's header digests (``beco_node.batch``). A header digest is SHA-256 over
``b"beco-proposal-v1\\0"`` and the deterministic serialisation of the
``ProposalHeader`` (proposal, sequence, validator timestamp). The SST commits a change
only if at least ``quorum`` distinct current user-node members signed the batch without
rejecting it.

Pure (no I/O).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable

from beco.v1 import peer_pb2 as ppb
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from beco_node import batch, keys
from beco_node.errors import BecoError, InvalidArgument, PermissionDenied, Unauthenticated
from beco_node.membership import Member, Membership

ENVELOPE_DOMAIN = b"beco-peer-v1\x00"
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
    "propose_batch": frozenset({"user"}),
    "vote_batch": frozenset({"validator"}),
    "commit_batch": frozenset({"validator"}),
    "applied": frozenset({"sst"}),
    "applied_batch": frozenset({"sst"}),
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
    sig = keys.sign(key, envelope_signing_bytes(kind, sender, now_ms, data))
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


def sign_batch_vote(
    batch_root: bytes, rejected: list[batch.Rejection], key: Ed25519PrivateKey, voter: str
) -> ppb.BatchVote:
    """A voter's one signature over a batch: VALID for every change not in ``rejected``."""
    rejected = sorted(rejected, key=lambda r: r.index)
    sig = keys.sign(key, batch.vote_signing_bytes(batch_root, rejected))
    return ppb.BatchVote(
        root=batch_root,
        voter=voter,
        rejected=[ppb.Rejection(index=r.index, code=r.code, reason=r.reason) for r in rejected],
        signature=sig,
    )


def rejections(vote: ppb.BatchVote) -> list[batch.Rejection]:
    return [batch.Rejection(r.index, r.code, r.reason) for r in vote.rejected]


def verify_batch_vote(vote: ppb.BatchVote, membership: Membership, batch_root: bytes) -> Member:
    """Check a batch vote: from a current user node, over ``batch_root``, signature valid."""
    member = membership.by_peer_id(vote.voter)
    if member is None or member.role != "user":
        raise PermissionDenied(f"vote from {vote.voter[:40]!r}, not a user node of the membership")
    if vote.root != batch_root:
        raise PermissionDenied(f"vote from {member.name} is for another batch")
    try:
        signed = batch.vote_signing_bytes(vote.root, rejections(vote))
    except ValueError as exc:
        raise PermissionDenied(f"vote from {member.name}: {exc}") from None
    if not keys.verify(member.public_key, vote.signature, signed):
        raise Unauthenticated(f"bad vote signature from {member.name}")
    return member


def verify_batch_certificate(
    cert: ppb.BatchCertificate, membership: Membership
) -> list[tuple[ppb.ProposalHeader, list[str]] | BecoError]:
    """Check a batch certificate: every vote's signature once for the whole batch, then
    each change's place in the batch and its quorum. Returns, per change of ``cert`` in
    order, its header and VALID voters, or the error that refuses that change alone.
    Raises for what refuses the whole certificate."""
    n = len(cert.digests)
    if not cert.headers or len(cert.headers) != len(cert.indexes):
        raise InvalidArgument("a batch certificate needs one index per header, and a header")
    if n > batch.MAX_BATCH or len(set(cert.indexes)) != len(cert.indexes):
        raise InvalidArgument("a batch certificate names a change twice or is too large")
    try:
        batch_root = batch.root(list(cert.digests))
    except ValueError as exc:
        raise InvalidArgument(f"bad batch: {exc}") from None
    votes: list[tuple[str, frozenset[int]]] = []
    for vote in cert.votes:
        member = verify_batch_vote(vote, membership, batch_root)
        if any(v == member.peer_id for v, _ in votes):
            raise PermissionDenied(f"two votes from {member.name} in one certificate")
        votes.append((member.peer_id, frozenset(r.index for r in vote.rejected)))
    out: list[tuple[ppb.ProposalHeader, list[str]] | BecoError] = []
    for index, header in zip(cert.indexes, cert.headers, strict=True):
        if index >= n or cert.digests[index] != header_digest(header):
            out.append(PermissionDenied(f"change {index} is not the batch's change {index}"))
            continue
        ok = batch.valid_voters(votes, index)
        if len(ok) < membership.quorum:
            out.append(
                PermissionDenied(
                    f"quorum certificate has {len(ok)} valid votes, the quorum is "
                    f"{membership.quorum}"
                )
            )
            continue
        out.append((header, ok))
    return out


def proposal_id(request_signature: bytes) -> str:
    return hashlib.sha256(request_signature).hexdigest()


def peer_record_ok(record: ppb.PeerRecord, member: Member) -> bool:
    return record.peer_id == member.peer_id and record.role == member.role


def distinct(ids: Iterable[str]) -> bool:
    lst = list(ids)
    return len(lst) == len(set(lst))
