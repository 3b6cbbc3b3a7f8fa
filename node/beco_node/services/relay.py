"""A peer's refusal reaches the caller with its real status.

When the SST refuses a commit, or the validator a proposal, the caller gets that status
(FAILED_PRECONDITION, ALREADY_EXISTS, PERMISSION_DENIED, DEADLINE_EXCEEDED, ...) with
the peer's reason, naming the peer. Only a peer that cannot be reached, or that failed
internally, becomes UNAVAILABLE: an internal error of another node is not the
caller's fault, and its details stay in that node's log.
"""

from __future__ import annotations

import grpc

from beco_node.errors import BecoError, Unavailable
from beco_node.origin import answered_by_node

# Statuses that say what happened to the request itself: passed on as they are. The SST
# raises them from the same checks the voters ran (``model.apply``, the client signature).
PASSED_ON = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAUTHENTICATED",
        "DEADLINE_EXCEEDED",
    }
)
# On a query or a proposal, PERMISSION_DENIED / UNAUTHENTICATED concern the calling node's
# signed envelope (not in the membership, its clock), never the client: UNAVAILABLE.
QUERY_PASSED_ON = PASSED_ON - {"PERMISSION_DENIED", "UNAUTHENTICATED"}
# The validator answers a proposal's fate inside the Outcome (its code is passed on as it
# is); a gRPC error from it is about the call: only a deadline is the caller's to know.
PROPOSE_PASSED_ON = frozenset({"DEADLINE_EXCEEDED"})


def code_of(exc: grpc.aio.AioRpcError, passed_on: frozenset[str] = PASSED_ON) -> str:
    """The status name to report for a failed call to a peer."""
    name = exc.code().name
    return name if name in passed_on else "UNAVAILABLE"


def relayed(
    exc: grpc.aio.AioRpcError, peer: str, passed_on: frozenset[str] = PASSED_ON
) -> BecoError:
    """The error to raise for a failed call to ``peer`` (e.g. "the SST")."""
    code = code_of(exc, passed_on)
    details = exc.details() or ""
    if code == "DEADLINE_EXCEEDED":
        return BecoError(f"{peer} did not answer in time: {details}", code)
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        if answered_by_node(exc):  # the peer said why (e.g. still starting): pass its reason on
            return Unavailable(f"{peer} is unavailable: {details}")
        return Unavailable(f"{peer} is unavailable")
    if code == "UNAVAILABLE":  # this node's or the peer's own problem, in the peer's words
        return Unavailable(f"{peer} failed this node's call ({exc.code().name}: {details})")
    return BecoError(f"{peer} refused: {details}", code)


def refused(code: str, reason: str, peer: str, passed_on: frozenset[str] = PASSED_ON) -> BecoError:
    """The error for a change ``peer`` refused inside a batch answer (status ``code``)."""
    if code in passed_on:
        return BecoError(f"{peer} refused: {reason}", code)
    return Unavailable(f"{peer} failed this node's call ({code}: {reason})")
