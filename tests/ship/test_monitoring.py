"""Dashboards and alerts, checked by promtool and by a real Prometheus scraping a real network.

The live test starts the local network (beco-local's LocalNetwork: real node processes, real
embedded PostgreSQL), puts a small load on it (creates, updates, reads in every zone), lets
Debian's Prometheus scrape every node with the labels a Kubernetes PodMonitor adds, then
evaluates every network-dashboard expression and the query of every network alert: each must
return data. The operator's panels are evaluated by the control-plane test, where it runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from .conftest import CHART, ROOT
from .prom import Prometheus, Target, check_metrics, metrics_text, substitute, variable_queries


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_monitoring", CHART / "hack" / "gen_monitoring.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_monitoring"] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _gen()
OPERATOR_ALERTS = {"BecoOperatorErrors", "BecoRolloutHeldBack"}


def test_generated_files_are_current() -> None:
    out = subprocess.run(
        [sys.executable, str(CHART / "hack" / "gen_monitoring.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_generator_is_lint_clean() -> None:
    hack = str(CHART / "hack")
    for cmd in (["format", "--check", hack], ["check", hack]):
        out = subprocess.run(
            [sys.executable, "-m", "ruff", *cmd], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_are_grafanas_model() -> None:
    """The committed JSON reads back through the SDK's typed dashboard model unchanged, and
    every panel query is a Prometheus query on the $datasource variable."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from grafana_foundation_sdk.cog import plugins
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert [f.name for f in files] == ["beco-network.json", "beco-operator.json"]
    for f in files:
        data = json.loads(f.read_text())
        again = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
        assert again == data, f.name
        targets = [t for p in data["panels"] for t in p.get("targets", [])]
        assert targets and all(
            t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and t["expr"]
            for t in targets
        ), f.name
    assert len(gen.all_exprs()) == sum(
        len(p.get("targets", [])) for f in files for p in json.loads(f.read_text())["panels"]
    )


def test_every_alert_and_panel_is_covered() -> None:
    names = {a.name for a in gen.ALERTS}
    assert names >= {
        "BecoQuorumAtRisk",
        "BecoCommitsFailing",
        "BecoCommitLatencyHigh",
        "BecoNodeDown",
        "BecoOperatorErrors",
    }
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert [r["alert"] for r in rules["groups"][0]["rules"]] == [a.name for a in gen.ALERTS]
    assert len(gen.all_exprs()) >= 20


def test_promtool_check_rules(promtool: str) -> None:
    out = subprocess.run(
        [promtool, "check", "rules", str(CHART / "files" / "alerts.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(gen.ALERTS)} rules found" in out.stdout


def _expect(alert: str, labels: dict[str, str], value: str) -> dict[str, object]:
    """The alert promtool should see: labels plus annotations rendered by hand."""
    import re

    (a,) = [a for a in gen.ALERTS if a.name == alert]
    full = {**labels, "severity": a.severity}

    def render(t: str) -> str:
        t = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), t)
        return re.sub(r"\{\{ \$value[^}]*\}\}", value, t)

    ann = {"summary": render(a.summary), "description": render(a.description)}
    ann["runbook"] = "docs/operations.md#alerts (BECO repository)"
    return {"exp_labels": full, "exp_annotations": ann}


def test_promtool_alert_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The alerts fire (and stay quiet) when they should: promtool test rules."""
    (tmp_path / "alerts.yaml").write_text((CHART / "files" / "alerts.yaml").read_text())
    users = {
        f'up{{job="beco", namespace="ns", network="n1", role="user", instance="u{i}"}}': v
        for i, v in enumerate(["1x20", "1x20", "0x20"])
    }
    # n2: 4 user nodes, all up; its membership's quorum rises from 3 to 4 at minute 11
    users |= {
        f'up{{job="beco", namespace="ns", network="n2", role="user", instance="w{i}"}}': "1x30"
        for i in range(4)
    }
    series = [{"series": k, "values": v} for k, v in users.items()]
    series += [
        {
            "series": 'beco_membership_quorum{job="beco", namespace="ns", network="n1", role="validator", instance="v1"}',
            "values": "2x20",
        },
        {
            "series": 'beco_membership_quorum{job="beco", namespace="ns", network="n2", role="validator", instance="v2"}',
            "values": "3x10 4x20",
        },
        {
            "series": 'up{job="beco", namespace="ns", network="n1", role="sst", instance="s"}',
            "values": "1x20",
        },
        {
            "series": 'beco_proposals_total{namespace="ns", network="n1", role="validator", outcome="committed"}',
            "values": "0+60x20",
        },
        {
            "series": 'beco_proposals_total{namespace="ns", network="n1", role="validator", outcome="failed"}',
            "values": "0+30x20",
        },
        {
            "series": 'beco_operator_rollout_waiting{job="op", namespace="ops", exported_namespace="ns", network="n1"}',
            "values": "1x60",
        },
        # u0 catches up with the SST every second; u1 stopped catching up at minute 0
        {
            "series": 'beco_sync_age_seconds{job="beco", namespace="ns", network="n1", role="user", instance="u0"}',
            "values": "1x20",
        },
        {
            "series": 'beco_sync_age_seconds{job="beco", namespace="ns", network="n1", role="user", instance="u1"}',
            "values": "0+60x20",
        },
    ]
    labels_u2 = {
        "job": "beco",
        "namespace": "ns",
        "network": "n1",
        "role": "user",
        "instance": "u2",
    }
    net_labels = {"namespace": "ns", "network": "n1"}
    tests = {
        "rule_files": ["alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "BecoNodeDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "BecoNodeDown",
                        "exp_alerts": [_expect("BecoNodeDown", labels_u2, "0")],
                    },
                    # n1: 3 user nodes, quorum 2, 2 up: no spare node left;
                    # n2: 4 up, quorum 3: one spare, quiet
                    {
                        "eval_time": "5m",
                        "alertname": "BecoQuorumAtRisk",
                        "exp_alerts": [_expect("BecoQuorumAtRisk", net_labels, "0")],
                    },
                    # n2's quorum raised to 4 (above the default 3 for 4 nodes): no spare left
                    {
                        "eval_time": "15m",
                        "alertname": "BecoQuorumAtRisk",
                        "exp_alerts": [
                            _expect("BecoQuorumAtRisk", net_labels, "0"),
                            _expect("BecoQuorumAtRisk", {**net_labels, "network": "n2"}, "0"),
                        ],
                    },
                    # a third of the proposals fail
                    {
                        "eval_time": "15m",
                        "alertname": "BecoCommitsFailing",
                        "exp_alerts": [_expect("BecoCommitsFailing", net_labels, "33.33%")],
                    },
                    {"eval_time": "15m", "alertname": "BecoCommitLatencyHigh", "exp_alerts": []},
                    {"eval_time": "1m", "alertname": "BecoUserNodeBehind", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "BecoUserNodeBehind",
                        "exp_alerts": [
                            _expect("BecoUserNodeBehind", {**net_labels, "instance": "u1"}, "5m 0s")
                        ],
                    },
                    {"eval_time": "20m", "alertname": "BecoRolloutHeldBack", "exp_alerts": []},
                    {
                        "eval_time": "45m",
                        "alertname": "BecoRolloutHeldBack",
                        "exp_alerts": [
                            _expect(
                                "BecoRolloutHeldBack",
                                {"exported_namespace": "ns", "network": "n1"},
                                "1",
                            )
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def _load(endpoints: list[str], seconds: float) -> tuple[int, list[str]]:
    """Creates, updates and reads on every user node; returns (committed, errors).

    A freshly started network may refuse the first writes until the validator has found the
    user nodes through the rendezvous, so creation is retried; later errors are collected
    (they show on the dashboards too) and the caller decides what is acceptable.
    """
    import grpc
    from beco_node import keys
    from beco_node.client import Client

    clients = [Client(ep, keys.generate_private_key(), timeout=10) for ep in endpoints]
    committed, errors = 0, []
    try:
        for c in clients:
            for attempt in range(50):
                try:
                    await c.create_user("Ada", ["M"], "Lovelace")
                    break
                except grpc.aio.AioRpcError as e:
                    if attempt == 49:
                        raise
                    errors.append(f"create: {e.code().name} {e.details()}")
                    await asyncio.sleep(0.2)
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            for c in clients:
                try:
                    await c.set_first(c.user_id, f"Ada{i}")
                    committed += 1
                except grpc.aio.AioRpcError as e:
                    errors.append(f"update: {e.code().name} {e.details()}")
                for other in clients:
                    await c.get_user(other.user_id)
            await clients[0].tree_head()
            i += 1
    finally:
        for c in clients:
            await c.close()
    return committed, errors


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_live_network_every_query_returns_data(promtool: str, tmp_path: Path) -> None:
    from beco_node.local.network import LocalNetwork, free_base_port

    net = LocalNetwork(tmp_path / "net", base_port=free_base_port())
    ms = net.prepare()
    try:
        try:
            await net.up()
        except Exception as e:
            logs = {p.name: p.read_text()[-1500:] for p in (net.state_dir / "logs").glob("*.log")}
            raise AssertionError(f"local network did not start: {e}; logs: {logs}") from None
        targets = [
            Target(
                "beco-node",
                n.metrics_port,
                {
                    "namespace": "local",
                    "network": ms.network,
                    "role": m.role,
                    "zone": m.zone if m.role == "user" else "",
                },
            )
            for m in ms.members
            for n in [net.nodes[m.name]]
        ]
        with Prometheus(
            promtool.replace("promtool", "prometheus"), tmp_path / "prom", targets
        ) as prom:
            prom.wait_up(len(targets))
            committed, errors = await _load(net.user_endpoints(), 20.0)
            # a healthy network commits nearly everything once it is up
            assert (
                committed > 0
                and len([e for e in errors if e.startswith("update")]) <= committed // 10
            ), errors
            # every node's /metrics passes promtool's lint
            for t in targets:
                problems = check_metrics(promtool, metrics_text(t.port))
                assert not problems, f"{t.labels['role']} :{t.port}: {problems}"
            await asyncio.sleep(2)  # the last scrapes
            empty = []
            for where, expr in gen.all_exprs():
                if where.startswith("operator/"):
                    continue
                if not prom.query(substitute(expr)):
                    empty.append(where)
            for a in gen.ALERTS:
                if a.name in OPERATOR_ALERTS:
                    continue
                prom.query(a.expr)  # valid PromQL on real data
                if not prom.query(a.query):
                    empty.append(f"alert {a.name}")
            network_dash = json.loads((CHART / "dashboards" / "beco-network.json").read_text())
            for label, q in variable_queries(network_dash):
                if not [r for r in prom.query(q) if r["metric"].get(label)]:
                    empty.append(f"variable {label}")
            assert not empty, f"no data for: {empty}"
            # the load is visible where it should be
            tree = prom.query('max(beco_tree_size{role="sst"})')
            assert float(tree[0]["value"][1]) >= committed
            zones = prom.query(substitute(gen.panel_exprs("network", "Read requests per zone")[0]))
            assert {r["metric"]["zone"] for r in zones} == set(net.zones)
    finally:
        await net.down()


def test_dashboards_reference_only_real_metrics() -> None:
    """Every beco_* metric a dashboard or alert uses is defined by the node or the operator."""
    import re

    defined = set()
    for src in (
        ROOT / "node" / "beco_node" / "metrics.py",
        ROOT / "operator" / "beco_operator" / "metrics.py",
    ):
        if src.exists():
            defined |= set(re.findall(r'"(beco_[a-z_]+)"', src.read_text()))
    used = set()
    for _, expr in gen.all_exprs():
        used |= set(re.findall(r"\b(beco_[a-z_]+)", expr))
    for a in gen.ALERTS:
        used |= set(re.findall(r"\b(beco_[a-z_]+)", a.expr))

    def base(m: str) -> str:
        return re.sub(r"_(bucket|sum|count)$", "", m)

    missing = sorted(m for m in used if base(m) not in defined and m not in defined)
    assert not missing, f"metrics not defined by node/operator: {missing}"
