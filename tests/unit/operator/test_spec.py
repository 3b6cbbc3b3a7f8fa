from __future__ import annotations

import pytest
from beco_operator.spec import ExternalDatabase, ManagedDatabase, SpecError, parse

from .conftest import make_spec


def test_defaults_from_the_minimal_spec() -> None:
    s = parse({"zones": ["a", "b", "c"]})
    assert s.per_zone == 1
    assert s.members == 3
    assert s.quorum == 2
    assert s.quorum_requested == "auto"
    assert isinstance(s.database, ManagedDatabase)
    assert s.database.storage == "1Gi"
    assert s.service_port == 9001
    assert s.monitoring and s.network_policy and not s.insecure


@pytest.mark.parametrize(
    ("zones", "per_zone", "quorum"),
    [(["a"], 1, 1), (["a", "b"], 2, 3), (["a", "b", "c"], 2, 4), (["a", "b", "c"], 3, 6)],
)
def test_auto_quorum_uses_the_nodes_function(zones: list[str], per_zone: int, quorum: int) -> None:
    assert parse({"zones": zones, "userNodes": {"perZone": per_zone}}).quorum == quorum


def test_explicit_quorum() -> None:
    assert make_spec(quorum=3).quorum == 3


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"zones": []}, "at least one zone"),
        ({"zones": ["a", "a"]}, "unique"),
        ({"zones": ["a", "b", "c"], "quorum": 4}, "unreachable"),
        ({"zones": ["a", "b", "c"], "quorum": 1}, "majority"),
        ({"zones": ["a"], "quorum": "most"}, "auto"),
        ({"zones": ["a"], "userNodes": {"perZone": 0}}, "positive"),
        (
            {"zones": ["a"], "database": {"managed": {}, "external": {"secretRef": {"name": "x"}}}},
            "exactly one",
        ),
        ({"zones": ["a"], "database": {"external": {"secretRef": {}}}}, "secretRef.name"),
    ],
)
def test_specs_that_cannot_work_say_why(raw: dict[str, object], why: str) -> None:
    with pytest.raises(SpecError, match=why):
        parse(raw)


def test_external_database() -> None:
    s = parse({"zones": ["a"], "database": {"external": {"secretRef": {"name": "pg"}}}})
    assert s.database == ExternalDatabase("pg", "dsn")


def test_image_defaults_to_the_operators_own_image() -> None:
    s = parse({"zones": ["a"]}, "registry.local:5000/beco/beco:1.2.3")
    assert (s.image, s.image_tag) == ("registry.local:5000/beco/beco", "1.2.3")
    s = parse({"zones": ["a"], "image": {"tag": "9"}}, "registry.local:5000/beco/beco")
    assert (s.image, s.image_tag) == ("registry.local:5000/beco/beco", "9")
    assert parse({"zones": ["a"]}).image == "ghcr.io/beco/beco"
