"""The CRD file: structural, with defaults, CEL rules, printer columns, status and scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from beco_operator import names

CRD = Path(__file__).resolve().parents[3] / "crds" / "beconetworks.beco.dev.yaml"


def load() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD.read_text()))


def walk(schema: dict[str, Any], where: str = "") -> list[str]:
    """Paths of schema nodes that are not structural (no type, no int-or-string, no preserve)."""
    bad = []
    if (
        "type" not in schema
        and not schema.get("x-kubernetes-int-or-string")
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        bad.append(where or "/")
    for k, sub in (schema.get("properties") or {}).items():
        bad += walk(sub, f"{where}.{k}")
    if isinstance(schema.get("items"), dict):
        bad += walk(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        bad += walk(schema["additionalProperties"], f"{where}{{}}")
    return bad


def test_names_match_the_operator() -> None:
    crd = load()
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["plural"] == names.PLURAL
    assert crd["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == names.VERSION
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    roles = status["restart"]["items"]["properties"]["role"]["enum"]
    assert roles == list(names.RESTART_ROLES), "status.restart lists the roles a restart names"


def test_structural_schema_with_defaults_and_rules() -> None:
    version = load()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert walk(schema) == []
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["zones"]
    assert spec["properties"]["quorum"]["default"] == "auto"
    assert spec["properties"]["userNodes"]["properties"]["perZone"]["default"] == 1
    assert spec["properties"]["database"]["default"] == {"managed": {}}
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("self.quorum <=" in r for r in rules) and any("* 2 >" in r for r in rules)
    assert "oldSelf" in str(spec["properties"]["database"])


def test_printer_columns_status_and_scale() -> None:
    version = load()["spec"]["versions"][0]
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    for c in ("Zones", "Members", "Quorum", "Ready", "Age"):
        assert c in cols
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.userNodes.perZone"
