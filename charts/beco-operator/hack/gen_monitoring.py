"""Generate the chart's Grafana dashboards and Prometheus alerts from one description.

Run ``python charts/beco-operator/hack/gen_monitoring.py`` (``make chart-sync``); a test fails
when the committed files differ from what this prints (``--check``).

The dashboards are built with Grafana's own typed SDK (``grafana-foundation-sdk``, pinned in
pyproject.toml): dashboards, rows, panels, Prometheus queries and template variables are its
builders, so mypy checks every field against Grafana's schema. We build the classic dashboard
JSON model (``builders.dashboard``, schemaVersion 42), the one Grafana's file provisioning and
the ``grafana_dashboard`` ConfigMap sidecar load, not the v2 resource that needs Grafana's
feature flags. The alerts are a Prometheus rule file (PrometheusRule), which the SDK does not
model (its ``alerting`` module is Grafana-managed alerting), so they stay plain data here.

Every PromQL expression is read back from the built dashboards (``all_exprs``), and the tests
evaluate each one against a real Prometheus scraping a real network.

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from beco.v1 import identity_pb2 as pb
from beco_node import calls, model

with warnings.catch_warnings():
    # the SDK flags its classic dashboard model as superseded by v2; we build the classic one
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_b
    from grafana_foundation_sdk.builders import dashboard as dash_b
    from grafana_foundation_sdk.builders import prometheus as prom_b
    from grafana_foundation_sdk.builders import stat as stat_b
    from grafana_foundation_sdk.builders import timeseries as ts_b
    from grafana_foundation_sdk.cog import builder as cog
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as common_m
    from grafana_foundation_sdk.models import dashboard as dash_m
    from grafana_foundation_sdk.models import prometheus as prom_m

CHART = Path(__file__).resolve().parent.parent
SEL = 'namespace=~"$namespace", network=~"$network"'
OPSEL = 'namespace=~"$namespace"'
RI = "$__rate_interval"
# The API's own split (beco_node.model): a write is a mutation, every other unary Identity
# method reads (Calls only carries them; each call is counted under its own method).
_METHODS = [
    m.name
    for m in pb.DESCRIPTOR.services_by_name["Identity"].methods
    if model.SERVICE + m.name in calls.CLIENT_CALLS.methods
]
WRITES = "|".join(m for m in _METHODS if model.SERVICE + m in model.MUTATIONS)
READS = "|".join(m for m in _METHODS if model.SERVICE + m not in model.MUTATIONS)
BY = "namespace, network"
# every panel and query reads the data source the dashboard's $datasource variable selects
DS = common_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
HEIGHT = 8

PanelBuilder = cog.Builder[dash_m.Panel]
P = TypeVar("P", ts_b.Panel, stat_b.Panel)


def _sel(*matchers: str) -> str:
    """A label selector body from the non-empty matchers."""
    return ", ".join(m for m in matchers if m)


def _q(p: float, metric: str, sel: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def quorum_margin(sel: str) -> str:
    """User nodes up beyond the quorum the validator loaded (panel and alert share it)."""
    users, validator = _sel(sel, 'role="user"'), _sel(sel, 'role="validator"')
    return f"sum by ({BY}) (up{{{users}}}) - max by ({BY}) (beco_membership_quorum{{{validator}}})"


def _with_targets(panel: P, exprs: list[tuple[str, str]]) -> P:
    """(PromQL, legend) pairs as the panel's Prometheus queries A, B, ..."""
    for i, (expr, legend) in enumerate(exprs):
        panel = panel.with_target(
            prom_b.Dataquery()
            .ref_id(chr(ord("A") + i))
            .datasource(DS)
            .expr(expr)
            .legend_format(legend)
            .range()
            .editor_mode(prom_m.QueryEditorMode.CODE)
        )
    return panel


def timeseries(
    title: str,
    exprs: list[tuple[str, str]],
    unit: str = "short",
    description: str = "",
    width: int = 12,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .height(HEIGHT)
        .span(width)
        .unit(unit)
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_m.LegendDisplayMode.LIST)
            .placement(common_m.LegendPlacement.BOTTOM)
        )
    )
    return _with_targets(panel, exprs)


def stat(
    title: str,
    exprs: list[tuple[str, str]],
    unit: str = "short",
    description: str = "",
    width: int = 12,
) -> stat_b.Panel:
    panel = (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .height(HEIGHT)
        .span(width)
        .unit(unit)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _with_targets(panel, exprs)


Section = tuple[str, list[PanelBuilder]]


def network_rows() -> list[Section]:
    user_writes = f'{SEL}, role="user", method=~"{WRITES}"'
    user_reads = f'{SEL}, role="user", method=~"{READS}"'
    return [
        (
            "Commits",
            [
                timeseries(
                    "Commit rate by outcome",
                    [
                        (
                            f'sum by (outcome) (rate(beco_proposals_total{{{SEL}, role="validator"}}[{RI}]))',
                            "{{outcome}}",
                        )
                    ],
                    unit="ops",
                    description="Proposals decided by the validator: committed, failed (no "
                    "quorum, invalid votes or deadline) and rejected.",
                ),
                timeseries(
                    "Update latency (client-facing, user nodes)",
                    [
                        (_q(0.5, "beco_rpc_latency_seconds", user_writes), "p50"),
                        (_q(0.99, "beco_rpc_latency_seconds", user_writes), "p99"),
                    ],
                    unit="s",
                    description="From the user node receiving a write to its answer "
                    "(committed or not).",
                ),
                timeseries(
                    "Quorum wait (validator)",
                    [
                        (_q(0.5, "beco_quorum_wait_seconds", SEL), "p50"),
                        (_q(0.99, "beco_quorum_wait_seconds", SEL), "p99"),
                    ],
                    unit="s",
                    description="From fan-out to the user nodes until a quorum decided.",
                ),
                timeseries(
                    "Votes by verdict",
                    [
                        (
                            f'sum by (verdict) (rate(beco_votes_total{{{SEL}, role="validator"}}[{RI}]))',
                            "{{verdict}}",
                        )
                    ],
                    unit="ops",
                    description="Votes the validator received; 'unreachable' are user nodes it "
                    "could not ask.",
                ),
                stat(
                    "Quorum margin",
                    [(quorum_margin(SEL), "{{network}}")],
                    description="User nodes up beyond the quorum of the membership the "
                    "validator loaded (beco_membership_quorum). 0: one more failure stops "
                    "commits; negative: commits are impossible.",
                ),
            ],
        ),
        (
            "Reads",
            [
                timeseries(
                    "Read requests per zone",
                    [
                        (
                            f"sum by (zone) (rate(beco_rpc_requests_total{{{user_reads}}}[{RI}]))",
                            "{{zone}}",
                        )
                    ],
                    unit="reqps",
                ),
                timeseries(
                    "Read latency p99 per zone",
                    [(_q(0.99, "beco_rpc_latency_seconds", user_reads, "zone"), "{{zone}}")],
                    unit="s",
                ),
                timeseries(
                    "Errors by gRPC code",
                    [
                        (
                            f'sum by (role, code) (rate(beco_rpc_requests_total{{{SEL}, code!="OK"}}[{RI}])) '
                            f"or sum by (role, code) (rate(beco_rpc_requests_total{{{SEL}}}[{RI}])) * 0",
                            "{{role}} {{code}}",
                        )
                    ],
                    unit="reqps",
                    description="Every RPC answered with a non-OK status, by node role (zero "
                    "when none).",
                ),
                timeseries(
                    "Identities in memory per zone",
                    [(f'sum by (zone) (beco_users{{{SEL}, role="user"}})', "{{zone}}")],
                ),
            ],
        ),
        (
            "Peers and log",
            [
                stat("Nodes up", [(f"sum by (role) (up{{{SEL}}})", "{{role}}")], width=8),
                timeseries(
                    "Connected peers",
                    [(f"beco_connected_peers{{{SEL}}}", "{{role}} {{zone}} {{instance}}")],
                    width=8,
                ),
                stat(
                    "Merkle tree size",
                    [(f'max by (network) (beco_tree_size{{{SEL}, role="sst"}})', "{{network}}")],
                    width=8,
                    description="Leaves in the SST's Merkle log: every committed change.",
                ),
            ],
        ),
        (
            "SST and PostgreSQL",
            [
                timeseries(
                    "SST commit time (certificate check + Postgres transaction)",
                    [
                        (_q(0.5, "beco_commit_seconds", f'{SEL}, role="sst"'), "p50"),
                        (_q(0.99, "beco_commit_seconds", f'{SEL}, role="sst"'), "p99"),
                    ],
                    unit="s",
                ),
                timeseries(
                    "SST requests by code",
                    [
                        (
                            f'sum by (method, code) (rate(beco_rpc_requests_total{{{SEL}, role="sst"}}[{RI}]))',
                            "{{method}} {{code}}",
                        )
                    ],
                    unit="reqps",
                    description="A failing Postgres shows as sst.CommitBatch answers other than OK.",
                ),
                timeseries(
                    "Membership generation",
                    [(f"max by (role) (beco_membership_generation{{{SEL}}})", "{{role}}")],
                    description="Nodes that disagree here have not yet picked up a membership "
                    "change.",
                ),
            ],
        ),
    ]


def operator_rows() -> list[Section]:
    return [
        (
            "Reconciles",
            [
                timeseries(
                    "Reconciles by result",
                    [
                        (
                            f"sum by (result) (rate(beco_operator_reconciles_total{{{OPSEL}}}[{RI}]))",
                            "{{result}}",
                        )
                    ],
                    unit="ops",
                ),
                timeseries(
                    "Reconcile duration",
                    [
                        (_q(0.5, "beco_operator_reconcile_duration_seconds", OPSEL), "p50"),
                        (_q(0.99, "beco_operator_reconcile_duration_seconds", OPSEL), "p99"),
                    ],
                    unit="s",
                ),
                timeseries(
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
                timeseries(
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
        (
            "Networks",
            [
                stat(
                    "Networks by phase",
                    [(f"sum by (phase) (beco_operator_networks{{{OPSEL}}})", "{{phase}}")],
                ),
                timeseries(
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
                    description="1 while a user-node restart is due but would leave fewer ready "
                    "nodes than the quorum; pending: restarts still to do. The network's "
                    "namespace is exported_namespace (namespace is the operator's).",
                ),
                stat(
                    "Operator replicas up / leader",
                    [
                        (f'sum(up{{{OPSEL}, job=~".*beco-operator.*"}})', "up"),
                        (f"sum(beco_operator_leader{{{OPSEL}}})", "leaders"),
                    ],
                ),
            ],
        ),
    ]


def _query_var(name: str, query: str) -> dash_b.QueryVariable:
    """A multi-value label_values() variable whose 'All' is the regex .*"""
    return (
        dash_b.QueryVariable(name)
        .datasource(DS)
        .query(query)
        .definition(query)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .current(dash_m.VariableOption(text="All", value="$__all"))
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
    )


def _dashboard(
    uid: str,
    title: str,
    rows: list[Section],
    variables: list[dash_b.QueryVariable],
) -> dash_m.Dashboard:
    board = (
        dash_b.Dashboard(title)
        .uid(uid)
        .tags(["beco"])
        .timezone("utc")
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .version(1)
        .with_variable(
            dash_b.DatasourceVariable("datasource")
            .type("prometheus")
            .current(dash_m.VariableOption(text="Prometheus", value="prometheus"))
        )
    )
    for v in variables:
        board = board.with_variable(v)
    for row_title, panels in rows:
        board = board.with_row(dash_b.Row(row_title).collapsed(False))
        for panel in panels:
            board = board.with_panel(panel)
    model = board.build()
    # stable panel ids (Grafana would number them on load; links need them fixed)
    for pid, p in enumerate(model.panels or [], start=1):
        p.id_val = pid
    return model


def dashboards() -> dict[str, dash_m.Dashboard]:
    """Every dashboard, by short name."""
    namespaces = "label_values(beco_proposals_total, namespace)"
    networks = 'label_values(beco_proposals_total{namespace=~"$namespace"}, network)'
    op_namespaces = "label_values(beco_operator_reconciles_total, namespace)"
    return {
        "network": _dashboard(
            "beco-network",
            "BECO network",
            network_rows(),
            [_query_var("namespace", namespaces), _query_var("network", networks)],
        ),
        "operator": _dashboard(
            "beco-operator",
            "BECO operator",
            operator_rows(),
            [_query_var("namespace", op_namespaces)],
        ),
    }


def _panels_queries(board: dash_m.Dashboard) -> list[tuple[str, prom_m.Dataquery]]:
    """(panel title, query) of every Prometheus query of the dashboard's panels."""
    out = []
    for p in board.panels or []:
        if isinstance(p, dash_m.Panel):
            out += [(p.title or "", t) for t in p.targets or [] if isinstance(t, prom_m.Dataquery)]
    return out


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target, read from the built dashboards."""
    return [
        (f"{name}/{title}/{q.legend_format}", q.expr)
        for name, board in dashboards().items()
        for title, q in _panels_queries(board)
    ]


def panel_exprs(name: str, title: str) -> list[str]:
    """The PromQL of one panel of one dashboard (KeyError when there is none)."""
    exprs = [q.expr for t, q in _panels_queries(dashboards()[name]) if t == title]
    if not exprs:
        raise KeyError(f"{name}/{title}")
    return exprs


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


ALERTS = [
    Alert(
        "BecoQuorumAtRisk",
        quorum_margin(""),
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
        "BecoUserNodeBehind",
        f'max by ({BY}, instance) (beco_sync_age_seconds{{role="user"}})',
        "> 15",
        "2m",
        "warning",
        "BECO user node {{ $labels.instance }} is not catching up with the SST",
        "Its last catch-up with the SST is {{ $value | humanizeDuration }} old (staleness "
        "bound 5 s): it answers each read from the SST, or UNAVAILABLE; see "
        "docs/reliability.md.",
    )
)


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
    header = "# Generated by charts/beco-operator/hack/gen_monitoring.py; do not edit.\n"
    out = {
        CHART / "dashboards" / f"beco-{name}.json": json.dumps(board, cls=JSONEncoder, indent=2)
        + "\n"
        for name, board in dashboards().items()
    }
    out[CHART / "files" / "alerts.yaml"] = header + yaml.safe_dump(
        rules(), sort_keys=False, width=1000
    )
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
