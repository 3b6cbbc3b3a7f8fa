"""Unit tests of the operator's pure modules: no cluster, no network."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from beco_operator.spec import NetworkSpec, parse

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_spec(**overrides: Any) -> NetworkSpec:
    raw: dict[str, Any] = {"zones": ["a", "b", "c"], "userNodes": {"perZone": 1}}
    raw.update(overrides)
    return parse(raw)


@pytest.fixture
def spec() -> NetworkSpec:
    return make_spec()
