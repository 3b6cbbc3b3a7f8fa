"""``beco-operator``: run the BecoNetwork operator.

Watches BecoNetworks in every namespace (or only ``--namespace`` ones), serves
Prometheus metrics on ``--metrics-port``, and with ``--leader-elect`` runs as
one of several replicas, reconciling only while it holds the Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

import kopf
from prometheus_client import start_http_server

from beco_operator import clock, handlers, kube
from beco_operator.config import OperatorConfig
from beco_operator.leader import LeaderElector
from beco_operator.rollout import SETTLE_SECONDS
from beco_operator.spec import DEFAULT_IMAGE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="beco-operator", description=__doc__)
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--metrics-host", default=os.environ.get("BECO_OPERATOR_METRICS_HOST", "0.0.0.0")
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("BECO_OPERATOR_METRICS_PORT", "8080")),
        help="Prometheus /metrics port (0 disables; default 8080)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("BECO_OPERATOR_HEALTH_PORT", "0")),
        help="kopf liveness endpoint port, served at /healthz (0 disables)",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("BECO_OPERATOR_LEADER_ELECT", "") in ("1", "true"),
        help="hold a coordination.k8s.io Lease before reconciling (for replicas > 1)",
    )
    p.add_argument("--lease-name", default="beco-operator")
    p.add_argument(
        "--lease-duration", type=int, default=15, help="seconds a Lease holds without renewal"
    )
    p.add_argument("--lease-renew", type=float, default=5.0, help="seconds between renewals")
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE or default)",
    )
    p.add_argument(
        "--identity", default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("BECO_OPERATOR_RESYNC_SECONDS", "60")),
        help="re-check every network this often even without events (reads only)",
    )
    p.add_argument(
        "--node-image",
        default=os.environ.get("BECO_OPERATOR_IMAGE") or DEFAULT_IMAGE,
        help="image of the nodes when a network names none (default: $BECO_OPERATOR_IMAGE, "
        "the operator's own image in the chart)",
    )
    p.add_argument(
        "--membership-wait",
        type=float,
        default=float(os.environ.get("BECO_OPERATOR_MEMBERSHIP_WAIT", "120")),
        help="longest wait, in seconds, for every pod to load a new membership before "
        "departing members are removed; the whole wait when pods' metrics cannot be read",
    )
    p.add_argument(
        "--pod-metrics",
        action=argparse.BooleanOptionalAction,
        default="KUBERNETES_SERVICE_HOST" in os.environ,
        help="read each pod's beco_membership_generation from its metrics port "
        "(default: on when running in a cluster, where pod addresses are reachable)",
    )
    p.add_argument(
        "--rollout-settle-seconds",
        type=float,
        default=float(os.environ.get("BECO_OPERATOR_ROLLOUT_SETTLE_SECONDS", SETTLE_SECONDS)),
        help="restart (or rotate) a user node only once every member's pod is this old, so "
        f"that peers resolve a replaced pod's new address first (default {SETTLE_SECONDS:.0f}: "
        "the cluster DNS cache and a margin)",
    )
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    memo = handlers.memo_for(
        OperatorConfig(
            node_image=args.node_image,
            resync_seconds=args.resync_seconds,
            membership_wait=args.membership_wait,
            pod_metrics=args.pod_metrics,
            rollout_settle=args.rollout_settle_seconds,
        )
    )
    stop = asyncio.Event()
    elector: LeaderElector | None = None
    lease_kube: kube.Kube | None = None
    if args.leader_elect:
        lease_kube = kube.Kube(kube.login())
        elector = LeaderElector(
            lease_kube,
            args.lease_namespace,
            args.lease_name,
            args.identity,
            clock.utcnow,
            lease_seconds=args.lease_duration,
            renew_seconds=args.lease_renew,
        )
        await elector.acquire()
    operator = asyncio.create_task(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            stop_flag=stop,
            memo=memo,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz"
            if args.health_port
            else None,
        )
    )
    code = 0
    if elector is not None:
        holder = asyncio.create_task(elector.hold())
        done, _ = await asyncio.wait({operator, holder}, return_when=asyncio.FIRST_COMPLETED)
        if holder in done:
            code = 1  # leadership lost: stop reconciling, let the pod restart as a standby
            stop.set()
            await operator
        else:
            holder.cancel()
            # kopf stopped (SIGTERM): nothing reconciles any more, so the successor may lead.
            await elector.release()
    else:
        await operator
    if lease_kube is not None:
        await lease_kube.close()
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handled watch event at INFO; the operator logs its own decisions.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    try:
        code = asyncio.run(run(args))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
