"""Where benchmark results go: one ``<!-- section: NAME -->`` of a Markdown file each."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def marker(name: str) -> str:
    return f"<!-- section: {name} -->"


def write_section(name: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section's body (up to the next section marker); append it when absent."""
    mark = marker(name)
    doc = path.read_text() if path.exists() else ""
    body = "\n" + text.strip() + "\n\n"
    if mark not in doc:
        path.write_text(doc.rstrip("\n") + "\n\n" + mark + body)
        return
    start = doc.index(mark) + len(mark)
    nxt = doc.find("<!-- section:", start)
    end = nxt if nxt != -1 else len(doc)
    path.write_text(doc[:start] + body + doc[end:].lstrip("\n"))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"1-minute load average {load:.1f} at the start"
    )
