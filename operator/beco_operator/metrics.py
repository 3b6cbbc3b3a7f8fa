"""The operator's own Prometheus metrics (served by ``beco-operator --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "beco_operator_reconciles_total", "Reconciles of a BecoNetwork, by result", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "beco_operator_reconcile_duration_seconds",
    "Time one reconcile of a BecoNetwork takes",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
API_WRITES = Counter(
    "beco_operator_api_writes_total",
    "Write requests the operator sent to the API server",
    ["verb", "kind"],
)
API_ERRORS = Counter(
    "beco_operator_api_errors_total", "API requests that failed, by HTTP status", ["code"]
)
NETWORKS = Gauge("beco_operator_networks", "BecoNetworks by phase", ["phase"])
ROLLOUT_WAITING = Gauge(
    "beco_operator_rollout_waiting",
    "1 while a user-node restart is due but held back to keep the quorum",
    ["namespace", "network"],
)
ROLLOUT_PENDING = Gauge(
    "beco_operator_rollout_pending_restarts",
    "User nodes still to restart for an image, config or key change",
    ["namespace", "network"],
)
RESTARTS = Counter(
    "beco_operator_user_node_restarts_total", "User-node pods the operator restarted", ["reason"]
)
KEYS_GENERATED = Counter("beco_operator_keys_generated_total", "Peer keys generated", ["why"])
LEADER = Gauge("beco_operator_leader", "1 while this replica holds the leader lease")
