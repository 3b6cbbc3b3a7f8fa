"""Prometheus metrics, served on ``/metrics`` by every node (``--metrics-listen``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

RPC_REQUESTS = Counter("beco_rpc_requests_total", "gRPC requests handled", ["method", "code"])
RPC_LATENCY = Histogram("beco_rpc_latency_seconds", "gRPC handling time", ["method"], buckets=_FAST)
PROPOSALS = Counter("beco_proposals_total", "proposals by outcome", ["outcome"])
VOTES = Counter("beco_votes_total", "votes cast (user) or received (validator)", ["verdict"])
QUORUM_WAIT = Histogram(
    "beco_quorum_wait_seconds", "validator: time from fan-out to decision", buckets=_FAST
)
FORWARD_TIME = Histogram(
    "beco_forward_seconds",
    "origin user node: its ProposeBatch call to the validator (sealing to outcomes)",
    buckets=_FAST,
)
SST_COMMIT_CALL = Histogram(
    "beco_validator_commit_seconds",
    "validator: its CommitBatch call to the SST (sealing to outcomes, retries included)",
    buckets=_FAST,
)
BATCH_SIZE = Histogram(
    "beco_batch_size",
    "validator: proposals per batch (one round of votes, one commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_TIME = Histogram(
    "beco_commit_seconds", "sst: certificate check + Postgres transaction", buckets=_FAST
)
CONNECTED_PEERS = Gauge("beco_connected_peers", "peers with a live record or channel")
TREE_SIZE = Gauge("beco_tree_size", "leaves in the Merkle log (sst) / last seen (others)")
USERS = Gauge("beco_users", "users held in memory")
MEMBERSHIP_GENERATION = Gauge("beco_membership_generation", "generation of the loaded membership")
MEMBERSHIP_QUORUM = Gauge("beco_membership_quorum", "quorum of the loaded membership")
PEER_CLOCK_OFFSET = Gauge(
    "beco_peer_clock_offset_seconds",
    "the peer's clock minus this node's, from its last signed message (transit included)",
    ["peer"],
)
PEER_CALLS = Counter(
    "beco_peer_calls_total",
    "calls to peers of the methods a peer link carries, by route (link or unary)",
    ["route"],
)
STREAM_CALLS = Counter(
    "beco_stream_calls_total",
    "calls served on a multiplexed stream (link: peer links; calls: clients' Identity/Calls)",
    ["stream"],
)
PEER_LINK_EVENTS = Counter(
    "beco_peer_link_events_total",
    "peer links opened, broken, and peers found without links (called unary)",
    ["event"],
)
MEMBERSHIP_USER_NODES = Gauge("beco_membership_user_nodes", "user nodes in the loaded membership")

APPLY_LAG = Gauge(
    "beco_apply_lag_entries",
    "user node: log entries the SST published that this node has not caught up with",
)
SYNC_AGE = Gauge(
    "beco_sync_age_seconds",
    "user node: seconds since the last completed catch-up with the SST was asked for",
)


def serve(listen: str) -> int:
    """Start the /metrics HTTP server (port 0: any free port); return its port, 0 if disabled."""
    if not listen or listen == "off":
        return 0
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0")
    return int(server.server_port)
