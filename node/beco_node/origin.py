"""The trailer on every status a BECO node returns, and the test for it.

A status that carries it was answered by a node (its reason is the node's word); one
without it came from the transport (no connection, TLS handshake, ...).
"""

from __future__ import annotations

import grpc

ORIGIN_KEY = "beco-origin"
ORIGIN_TRAILER = ((ORIGIN_KEY, "node"),)


def answered_by_node(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the status came from a BECO node (its origin trailer), not the transport."""
    trailers = exc.trailing_metadata()
    return isinstance(trailers, grpc.aio.Metadata) and ORIGIN_KEY in trailers
