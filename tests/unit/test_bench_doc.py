"""benchmarks.doc: each benchmark rewrites only its own section of the results file."""

from pathlib import Path

from benchmarks.doc import marker, write_section


def test_replaces_only_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\n{marker('a')}\nold a\n\n{marker('b')}\nkeep b\n")
    write_section("a", "new a\nline 2", doc)
    text = doc.read_text()
    assert "old a" not in text
    assert f"{marker('a')}\nnew a\nline 2\n\n{marker('b')}\nkeep b\n" in text
    write_section("b", "new b", doc)
    assert doc.read_text().endswith(f"{marker('b')}\nnew b\n\n")
    assert "new a" in doc.read_text()


def test_appends_a_missing_section(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n")
    write_section("c", "figures", doc)
    write_section("c", "figures again", doc)
    text = doc.read_text()
    assert text.count(marker("c")) == 1
    assert text == f"# Benchmarks\n\n{marker('c')}\nfigures again\n\n"
