"""The cluster commands of README.md and docs/*.md, parsed from their ``bash`` blocks, so the
suite runs them exactly as written and a doc change cannot drift from what was run.

A command is a logical line (``\\`` continuations and a ``for ...; done`` loop joined) whose
first word is ``kubectl`` or ``helm`` (or a loop around one), without its trailing comment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, Target

DOCS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
RAN: set[str] = set()  # the doc commands this session ran verbatim


def _logical_lines(block: str) -> list[str]:
    out: list[str] = []
    cur = ""
    for raw in block.splitlines():
        line = raw.strip()
        cur = f"{cur} {line}".strip() if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        if cur.startswith("for ") and not re.search(r"\bdone\s*$", cur):
            continue
        out.append(cur)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _strip_comment(line: str) -> str:
    return line.split("  #", 1)[0].strip()


def doc_commands() -> dict[str, str]:
    """Every cluster command of the docs -> the file it is in."""
    found: dict[str, str] = {}
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in _logical_lines(block):
                cmd = _strip_comment(line)
                first = cmd.split(" ", 1)[0]
                if first in ("kubectl", "helm") or (
                    first == "for" and re.search(r"\b(kubectl|helm) ", cmd)
                ):
                    found.setdefault(cmd, doc)
    return found


def run_doc(
    k8s: Target, cmd: str, cwd: Path = REPO, timeout: float = 600, image_overrides: str = ""
) -> str:
    """Run ``cmd``, which must be a doc command as written, through bash; return its stdout.

    ``image_overrides`` (``--set image...`` flags appended) is the one change allowed: the
    image this machine built when it is not the docs' (a second checkout's tag, kind's).
    """
    assert cmd in doc_commands(), f"not a command of README.md or docs/*.md: {cmd!r}"
    assert all(a == "--set" or a.startswith("image.") for a in image_overrides.split()), (
        image_overrides
    )
    if image_overrides:
        cmd, written = f"{cmd} {image_overrides}", cmd
    else:
        written = cmd
    env = k8s.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # kubectl-beco
    res = subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"`{cmd}` exited {res.returncode}:\n{res.stdout}{res.stderr}"
    RAN.add(written)
    return res.stdout
