"""A real Prometheus (Debian's package) scraping given targets, for the dashboard checks."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCRAPE_INTERVAL = "1s"
# Grafana's $__rate_interval is at least four scrape intervals.
RATE_INTERVAL = "15s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def check_metrics(promtool: str, text: str) -> str:
    """`promtool check metrics` (lint of the exposition); returns its complaints."""
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    return (out.stdout + out.stderr).strip() if out.returncode else ""


@dataclass
class Target:
    job: str
    port: int
    labels: dict[str, str]


def substitute(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every variable on 'All'."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", ".*")
        .replace("$network", ".*")
    )


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: list[Target]) -> None:
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        jobs: dict[str, list[dict[str, Any]]] = {}
        for t in targets:
            jobs.setdefault(t.job, []).append(
                {"targets": [f"127.0.0.1:{t.port}"], "labels": t.labels}
            )
        cfg = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": j, "static_configs": sc} for j, sc in sorted(jobs.items())
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "prometheus did not start: " + (self.workdir / "prometheus.log").read_text()
                    ) from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error, returns the result vector."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: {e.read().decode()}") from None
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_up(self, n: int, limit_s: float = 30) -> None:
        deadline = time.monotonic() + limit_s
        while True:
            up = self.query("up == 1")
            if len(up) >= n:
                return
            assert time.monotonic() < deadline, f"only {len(up)} of {n} targets up"
            time.sleep(0.5)


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Grafana `label_values(selector, label)` variables as PromQL: (label, count by label)."""
    import re

    out = []
    for v in dashboard["templating"]["list"]:
        if v.get("type") != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
        assert m, f"unsupported variable query {v['definition']}"
        out.append((m[2], f"count by ({m[2]}) ({substitute(m[1])})"))
    return out
