"""Read the membership generation each pod has loaded, from its Prometheus endpoint.

Only possible where the operator can reach pod addresses (it runs in the cluster); elsewhere
:class:`NoPodMetrics` answers "unknown" and the membership gate falls back to its bounded
wait. Every read is short and concurrent: a slow pod costs one timeout, never a stuck
reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from beco_operator import names

GAUGE = "beco_membership_generation"


class GenerationReader(Protocol):
    async def generations(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, int | None]: ...

    async def close(self) -> None: ...


class NoPodMetrics:
    """The operator cannot reach pods (e.g. it runs outside the cluster)."""

    async def generations(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
        return {str(p["metadata"]["name"]): None for p in pods}

    async def close(self) -> None:
        return None


def parse_generation(text: str) -> int | None:
    """The value of ``beco_membership_generation`` in a Prometheus text exposition."""
    with contextlib.suppress(ValueError):
        for family in text_string_to_metric_families(text):
            if family.name == GAUGE:
                for sample in family.samples:
                    if sample.name == GAUGE:
                        return int(sample.value)
    return None


class HttpPodMetrics:
    def __init__(self, timeout: float = 1.0, port: int = names.METRICS_PORT) -> None:
        self.timeout = timeout
        self.port = port
        self._session: aiohttp.ClientSession | None = None

    async def _one(self, pod: Mapping[str, Any]) -> int | None:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        host = f"[{ip}]" if ":" in str(ip) else str(ip)
        try:
            async with self._session.get(f"http://{host}:{self.port}/metrics") as r:
                if r.status != 200:
                    return None
                return parse_generation(await r.text())
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def generations(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
        values = await asyncio.gather(*(self._one(p) for p in pods))
        return {str(p["metadata"]["name"]): v for p, v in zip(pods, values, strict=True)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
