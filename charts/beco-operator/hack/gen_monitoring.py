"""Generate the chart's Grafana dashboards and Prometheus alerts from one description.

Run ``python charts/beco-operator/hack/gen_monitoring.py`` (``make chart-sync``); a test fails
when the committed files differ from what this prints. Keeping panels and alerts here, as data,
lets the tests evaluate every PromQL expression against a real Prometheus.

Metric names are those of ``beco_node.metrics`` and ``beco_operator.metrics``. Labels the
scrape adds (Kubernetes PodMonitor relabelling, or static labels locally): ``namespace``,
``network``, ``role`` (rendezvous | validator | user | sst) and ``zone`` (user nodes).
Grafana variables: ``$namespace`` and ``$network`` (regex matchers), ``$__rate_interval``.

An alert is ``query`` + ``condition``: the tests check that ``query`` returns data on a live
network (so the alert can fire at all), and promtool checks the whole rule file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent
SEL = 'namespace=~"$namespace", network=~"$network"'
RI = "$__rate_interval"
READS = "GetUser|ListUsers|GetHistory|GetTreeHead|GetInclusionProof|GetConsistencyProof"
WRITES = "CreateUser|UpdateFirstName|UpdateMiddleNames|UpdateLastName|GrantAccess|RevokeAccess"
BY = "namespace, network"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass(frozen=True)
class Alert:
    name: str
    query: str
    condition: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def expr(self) -> str:
        return f"{self.query} {self.condition}"


def _q(p: float, metric: str, sel: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


NETWORK_ROWS = [
    Row(
        "Commits",
        [
            Panel(
                "Commit rate by outcome",
                [
                    (
                        f'sum by (outcome) (rate(beco_proposals_total{{{SEL}, role="validator"}}[{RI}]))',
                        "{{outcome}}",
                    )
                ],
                unit="ops",
                description="Proposals decided by the validator: committed, failed (no quorum, "
                "invalid votes or deadline) and rejected.",
            ),
            Panel(
                "Update latency (client-facing, user nodes)",
                [
                    (
                        _q(
                            0.5,
                            "beco_rpc_latency_seconds",
                            f'{SEL}, role="user", method=~"{WRITES}"',
                        ),
                        "p50",
                    ),
                    (
                        _q(
                            0.99,
                            "beco_rpc_latency_seconds",
                            f'{SEL}, role="user", method=~"{WRITES}"',
                        ),
                        "p99",
                    ),
                ],
                unit="s",
                description="From the user node receiving a write to its answer (committed or not).",
            ),
            Panel(
                "Quorum wait (validator)",
                [
                    (_q(0.5, "beco_quorum_wait_seconds", SEL), "p50"),
                    (_q(0.99, "beco_quorum_wait_seconds", SEL), "p99"),
                ],
                unit="s",
                description="From fan-out to the user nodes until a quorum decided.",
            ),
            Panel(
                "Votes by verdict",
                [
                    (
                        f'sum by (verdict) (rate(beco_votes_total{{{SEL}, role="validator"}}[{RI}]))',
                        "{{verdict}}",
                    )
                ],
                unit="ops",
                description="Votes the validator received; 'unreachable' are user nodes it could not ask.",
            ),
            Panel(
                "Quorum margin",
                [
                    (
                        f'sum by ({BY}) (up{{{SEL}, role="user"}}) - max by ({BY}) '
                        f'(beco_membership_quorum{{{SEL}, role="validator"}})',
                        "{{network}}",
                    )
                ],
                kind="stat",
                description="User nodes up beyond the quorum of the membership the validator "
                "loaded (beco_membership_quorum). 0: one more "
                "failure stops commits; negative: commits are impossible.",
            ),
        ],
    ),
    Row(
        "Reads",
        [
            Panel(
                "Read requests per zone",
                [
                    (
                        f'sum by (zone) (rate(beco_rpc_requests_total{{{SEL}, role="user", method=~"{READS}"}}[{RI}]))',
                        "{{zone}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Read latency p99 per zone",
                [
                    (
                        _q(
                            0.99,
                            "beco_rpc_latency_seconds",
                            f'{SEL}, role="user", method=~"{READS}"',
                            "zone",
                        ),
                        "{{zone}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Errors by gRPC code",
                [
                    (
                        f'sum by (role, code) (rate(beco_rpc_requests_total{{{SEL}, code!="OK"}}[{RI}])) '
                        f"or sum by (role, code) (rate(beco_rpc_requests_total{{{SEL}}}[{RI}])) * 0",
                        "{{role}} {{code}}",
                    )
                ],
                unit="reqps",
                description="Every RPC answered with a non-OK status, by node role (zero when none).",
            ),
            Panel(
                "Identities in memory per zone",
                [(f'sum by (zone) (beco_users{{{SEL}, role="user"}})', "{{zone}}")],
            ),
        ],
    ),
    Row(
        "Peers and log",
        [
            Panel(
                "Nodes up",
                [(f"sum by (role) (up{{{SEL}}})", "{{role}}")],
                kind="stat",
                width=8,
            ),
            Panel(
                "Connected peers",
                [(f"beco_connected_peers{{{SEL}}}", "{{role}} {{zone}} {{instance}}")],
                width=8,
            ),
            Panel(
                "Merkle tree size",
                [(f'max by (network) (beco_tree_size{{{SEL}, role="sst"}})', "{{network}}")],
                kind="stat",
                width=8,
                description="Leaves in the SST's Merkle log: every committed change.",
            ),
        ],
    ),
    Row(
        "SST and PostgreSQL",
        [
            Panel(
                "SST commit time (certificate check + Postgres transaction)",
                [
                    (_q(0.5, "beco_commit_seconds", f'{SEL}, role="sst"'), "p50"),
                    (_q(0.99, "beco_commit_seconds", f'{SEL}, role="sst"'), "p99"),
                ],
                unit="s",
            ),
            Panel(
                "SST requests by code",
                [
                    (
                        f'sum by (method, code) (rate(beco_rpc_requests_total{{{SEL}, role="sst"}}[{RI}]))',
                        "{{method}} {{code}}",
                    )
                ],
                unit="reqps",
                description="A failing Postgres shows as sst.Commit answers other than OK.",
            ),
            Panel(
                "Membership generation",
                [(f"max by (role) (beco_membership_generation{{{SEL}}})", "{{role}}")],
                description="Nodes that disagree here have not yet picked up a membership change.",
            ),
        ],
    ),
]

OPSEL = 'namespace=~"$namespace"'
OPERATOR_ROWS = [
    Row(
        "Reconciles",
        [
            Panel(
                "Reconciles by result",
                [
                    (
                        f"sum by (result) (rate(beco_operator_reconciles_total{{{OPSEL}}}[{RI}]))",
                        "{{result}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Reconcile duration",
                [
                    (_q(0.5, "beco_operator_reconcile_duration_seconds", OPSEL), "p50"),
                    (_q(0.99, "beco_operator_reconcile_duration_seconds", OPSEL), "p99"),
                ],
                unit="s",
            ),
            Panel(
                "API errors by HTTP status",
                [
                    (
                        f"sum by (code) (rate(beco_operator_api_errors_total{{{OPSEL}}}[{RI}])) "
                        f"or sum(rate(beco_operator_reconciles_total{{{OPSEL}}}[{RI}])) * 0",
                        "{{code}}",
                    )
                ],
                unit="ops",
                description="Failed API requests (zero when none).",
            ),
            Panel(
                "API writes by kind",
                [
                    (
                        f"sum by (kind, verb) (rate(beco_operator_api_writes_total{{{OPSEL}}}[{RI}]))",
                        "{{verb}} {{kind}}",
                    )
                ],
                unit="ops",
                description="A converged, idle operator writes nothing.",
            ),
        ],
    ),
    Row(
        "Networks",
        [
            Panel(
                "Networks by phase",
                [(f"sum by (phase) (beco_operator_networks{{{OPSEL}}})", "{{phase}}")],
                kind="stat",
            ),
            Panel(
                "Rollouts held back by the quorum guard",
                [
                    (
                        f"max by (exported_namespace, network) (beco_operator_rollout_waiting{{{OPSEL}}})",
                        "waiting {{exported_namespace}}/{{network}}",
                    ),
                    (
                        f"max by (exported_namespace, network) "
                        f"(beco_operator_rollout_pending_restarts{{{OPSEL}}})",
                        "pending {{exported_namespace}}/{{network}}",
                    ),
                ],
                description="1 while a user-node restart is due but would leave fewer ready nodes "
                "than the quorum; pending: restarts still to do. The network's namespace is "
                "exported_namespace (namespace is the operator's).",
            ),
            Panel(
                "Operator replicas up / leader",
                [
                    (f'sum(up{{{OPSEL}, job=~".*beco-operator.*"}})', "up"),
                    (f"sum(beco_operator_leader{{{OPSEL}}})", "leaders"),
                ],
                kind="stat",
            ),
        ],
    ),
]

ALERTS = [
    Alert(
        "BecoQuorumAtRisk",
        NETWORK_ROWS[0].panels[4].exprs[0][0].replace(SEL, "").replace("{, ", "{"),
        "<= 0",
        "2m",
        "critical",
        "BECO network {{ $labels.namespace }}/{{ $labels.network }}: one more user node down stops commits",
        "Only {{ $value }} user nodes up beyond the quorum of the loaded membership.",
    ),
    Alert(
        "BecoCommitsFailing",
        f'(sum by ({BY}) (rate(beco_proposals_total{{role="validator", outcome="failed"}}[5m])) '
        f'or sum by ({BY}) (rate(beco_proposals_total{{role="validator"}}[5m])) * 0) '
        f'/ sum by ({BY}) (rate(beco_proposals_total{{role="validator"}}[5m]))',
        "> 0.05",
        "5m",
        "critical",
        "BECO network {{ $labels.namespace }}/{{ $labels.network }}: proposals failing",
        "{{ $value | humanizePercentage }} of proposals failed over 5 minutes.",
    ),
    Alert(
        "BecoCommitLatencyHigh",
        f"histogram_quantile(0.99, sum by ({BY}, le) (rate(beco_rpc_latency_seconds_bucket"
        f'{{role="user", method=~"{WRITES}"}}[5m])))',
        "> 0.5",
        "10m",
        "warning",
        "BECO network {{ $labels.namespace }}/{{ $labels.network }}: slow commits",
        "p99 update latency is {{ $value | humanizeDuration }} (threshold 500 ms).",
    ),
    Alert(
        "BecoNodeDown",
        'up{role=~"rendezvous|validator|user|sst"}',
        "== 0",
        "2m",
        "warning",
        "BECO {{ $labels.role }} node {{ $labels.instance }} is down",
        "Prometheus cannot scrape {{ $labels.role }} node {{ $labels.instance }} of "
        "{{ $labels.namespace }}/{{ $labels.network }} for 2 minutes.",
    ),
    Alert(
        "BecoOperatorErrors",
        '(sum by (namespace) (rate(beco_operator_reconciles_total{result="error"}[10m])) '
        "or sum by (namespace) (rate(beco_operator_reconciles_total[10m])) * 0) "
        "+ (sum by (namespace) (rate(beco_operator_api_errors_total[10m])) "
        "or sum by (namespace) (rate(beco_operator_reconciles_total[10m])) * 0)",
        "> 0",
        "15m",
        "warning",
        "BECO operator in {{ $labels.namespace }} keeps failing",
        "Reconcile or API errors for 15 minutes ({{ $value }} per second); see the operator's "
        "log and the BecoNetworks' conditions.",
    ),
]


ALERTS.append(
    Alert(
        "BecoRolloutHeldBack",
        "max by (exported_namespace, network) (beco_operator_rollout_waiting)",
        "> 0",
        "30m",
        "warning",
        "BECO network {{ $labels.exported_namespace }}/{{ $labels.network }}: rollout held back",
        "A user-node restart has waited 30 minutes for enough ready nodes to keep the quorum; "
        "see the BecoNetwork's conditions for the reason.",
    )
)


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if p.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(p.exprs)
        ],
    }


def _var(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard(
    uid: str, title: str, rows: list[Row], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(p, pid, x, y))
            pid, x = pid + 1, x + p.width
        y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": ["beco"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                *variables,
            ]
        },
        "panels": panels,
    }


def rules() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": "beco.rules",
                "rules": [
                    {
                        "alert": a.name,
                        "expr": a.expr,
                        "for": a.for_,
                        "labels": {"severity": a.severity},
                        "annotations": {
                            "summary": a.summary,
                            "description": a.description,
                            "runbook": "docs/operations.md#alerts (BECO repository)",
                        },
                    }
                    for a in ALERTS
                ],
            }
        ]
    }


def outputs() -> dict[Path, str]:
    """Every generated file and its exact content."""
    ns = _var("namespace", "label_values(beco_proposals_total, namespace)")
    net = _var("network", 'label_values(beco_proposals_total{namespace=~"$namespace"}, network)')
    opns = _var("namespace", "label_values(beco_operator_reconciles_total, namespace)")
    network = dashboard("beco-network", "BECO network", NETWORK_ROWS, [ns, net])
    operator = dashboard("beco-operator", "BECO operator", OPERATOR_ROWS, [opns])
    import yaml  # the chart's only other input format; PyYAML is a project dependency

    header = "# Generated by charts/beco-operator/hack/gen_monitoring.py; do not edit.\n"
    return {
        CHART / "dashboards" / "beco-network.json": json.dumps(network, indent=2) + "\n",
        CHART / "dashboards" / "beco-operator.json": json.dumps(operator, indent=2) + "\n",
        CHART / "files" / "alerts.yaml": header
        + yaml.safe_dump(rules(), sort_keys=False, width=1000),
    }


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target; Grafana variables still in place."""
    out = []
    for dash, rows in (("network", NETWORK_ROWS), ("operator", OPERATOR_ROWS)):
        for row in rows:
            for p in row.panels:
                out += [(f"{dash}/{p.title}/{legend}", e) for e, legend in p.exprs]
    return out


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for path, text in outputs().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale generated files (run make chart-sync):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
