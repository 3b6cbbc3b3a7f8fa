"""benchmarks.network.checkout_node: an earlier revision's node code for --before-ref."""

import subprocess
from pathlib import Path

import pytest

from benchmarks.network import ROOT, checkout_node


def test_extracts_the_revisions_node_code(tmp_path: Path) -> None:
    first = subprocess.run(  # the oldest commit that has node code
        ["git", "-C", str(ROOT), "log", "--format=%h", "--diff-filter=A", "--", "node/beco_node"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    node, short = checkout_node(first, tmp_path / "before")
    assert node == tmp_path / "before" / "node"
    assert (node / "beco_node" / "__init__.py").is_file()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", first],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert short == head
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", first, "node"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sorted(
        str(f.relative_to(tmp_path / "before")) for f in node.rglob("*") if f.is_file()
    ) == sorted(listed)


def test_an_unknown_revision_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such-rev"):
        checkout_node("no-such-rev", tmp_path / "before")
