from __future__ import annotations

import asyncio
import socket

from beco_operator import podmetrics
from beco_operator.main import parse_args

EXPOSITION = """# HELP beco_membership_generation the membership generation this node has loaded
# TYPE beco_membership_generation gauge
beco_membership_generation 7.0
# TYPE beco_commits_total counter
beco_commits_total 3.0
"""


def test_parse_generation() -> None:
    assert podmetrics.parse_generation(EXPOSITION) == 7
    assert podmetrics.parse_generation("beco_commits_total 3\n") is None
    assert podmetrics.parse_generation("not prometheus {{{") is None


def test_a_pod_without_an_address_or_a_listener_is_unknown() -> None:
    async def run() -> dict[str, int | None]:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        reader = podmetrics.HttpPodMetrics(timeout=0.5, port=port)
        try:
            return await reader.generations(
                [
                    {"metadata": {"name": "a"}, "status": {}},
                    {"metadata": {"name": "b"}, "status": {"podIP": "127.0.0.1"}},
                ]
            )
        finally:
            await reader.close()

    assert asyncio.run(run()) == {"a": None, "b": None}


def test_settings_come_from_the_command_line() -> None:
    args = parse_args(["--membership-wait=7", "--no-pod-metrics", "--node-image=r/beco:1"])
    assert (args.membership_wait, args.pod_metrics, args.node_image) == (7.0, False, "r/beco:1")
    assert parse_args(["--pod-metrics"]).pod_metrics is True
