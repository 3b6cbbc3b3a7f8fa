"""Value types and errors of the SST store. Domain payloads are opaque bytes here."""

from __future__ import annotations

from dataclasses import dataclass

from beco_node.merkle.sth import SignedTreeHead


@dataclass(frozen=True)
class CommitEntry:
    """One validated change to commit."""

    proposal_id: str  # idempotency key
    user_id: str
    sequence: int  # 1 for CreateUser, then current + 1
    kind: str  # "create_user", "set_first_name", "grant", ...
    state: bytes  # the user's full new state (serialised by the node side)
    leaf_data: bytes  # the Merkle leaf contents: canonical change bytes incl. the QC
    committed_ms: int  # SST timestamp


@dataclass(frozen=True)
class CommitResult:
    """Where a change landed in the log, and the first tree head that includes it."""

    proposal_id: str
    user_id: str
    sequence: int
    leaf_index: int
    tree_head: SignedTreeHead
    duplicate: bool  # True: this proposal_id was already committed, nothing was written


@dataclass(frozen=True)
class ChangeRecord:
    """A committed change as ``history`` returns it."""

    proposal_id: str
    user_id: str
    sequence: int
    kind: str
    leaf_index: int
    leaf_data: bytes
    committed_ms: int


class StoreError(Exception):
    """Base of the store's errors."""


class SequenceError(StoreError):
    """The entry's sequence is not the user's current sequence + 1; nothing was written."""

    def __init__(self, user_id: str, expected: int, got: int) -> None:
        self.user_id = user_id
        self.expected = expected
        self.got = got
        if got == 1 and expected > 1:
            detail = f"user {user_id!r} already exists (at sequence {expected - 1})"
        elif expected == 1:
            detail = f"user {user_id!r} does not exist"
        else:
            detail = f"user {user_id!r} is at sequence {expected - 1}"
        super().__init__(f"wrong sequence: expected {expected}, got {got}: {detail}")


class ProposalConflictError(StoreError, ValueError):
    """A proposal_id already committed with different content; nothing was written."""


class StoreUnavailableError(StoreError):
    """PostgreSQL could not be reached or the connection broke.

    The outcome of an interrupted commit is unknown to the caller but not lost:
    retrying the same entry is safe (idempotent on proposal_id) and returns the
    stored result if it did commit. ``timed_out``: PostgreSQL was reached but did not
    answer in time (it may only be slow), as opposed to a refused or broken connection.
    """

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class FailedRecord:
    """A proposal recorded as definitively failed."""

    proposal_id: str
    code: str  # the gRPC status name the write was answered with
    reason: str
    failed_ms: int


@dataclass(frozen=True)
class StoredCommit:
    """A committed proposal as the database knows it (its outcome, looked up later)."""

    result: CommitResult
    committed_ms: int


class ProposalFailedError(StoreError):
    """The proposal was recorded failed: it is never committed."""

    def __init__(self, record: FailedRecord) -> None:
        self.record = record
        super().__init__(f"proposal {record.proposal_id!r} failed: {record.reason}")


class StoreIntegrityError(StoreError):
    """The stored log does not match its signed tree head (tampering or corruption)."""
