"""The README's tour as data: its code blocks, read from README.md itself, and a runner for their commands.

Every code block of the "A five-minute tour" section carries a marker comment on the line before it,
``<!-- tour: STEP -->`` (invisible when the README renders), which says what the tests do with it:

- ``skip: REASON``: nothing (it needs something the test machine has not got);
- ``file NAME``: its text is written to ``NAME`` in the tour's folder;
- ``config``: YAML merged into the running server's config file (lists extended), then ``kill -HUP``;
- any other name: a step whose commands run (``sh`` through bash, ``python`` through the interpreter) and
  whose outcome the test checks (``tests/integration/test_readme_tour.py`` has one check per step name).

A block without a marker fails the test, so a block added to the tour cannot go untested unnoticed. The
commands run as written, with only these stand-ins: the test's server for ``make run`` (started with the
README's own ``export`` lines), its address for ``http://127.0.0.1:8080``, the real executable for
``.venv/bin/chatgate``, and the values the README elides (``cg-...``: the key ``keys create`` printed;
``5f0c...``: the session id the previous answer gave; ``thr_3f9a...``: the ChatKit thread the tour made).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLI = str(Path(sys.executable).with_name("chatgate"))
README_URL = "http://127.0.0.1:8080"

_SECTION = re.compile(r"^## A five-minute tour\n(.*?)(?=^## )", re.M | re.S)
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.M | re.S)
_MARKER = re.compile(r"<!-- tour: (.+?) -->\n\Z")


@dataclass(frozen=True)
class Block:
    step: str
    lang: str
    text: str

    def commands(self) -> list[tuple[str, list[str]]]:
        """A shell block's commands (continuation lines, and lines inside a single-quoted string, joined), each
        with the comment lines after it (what the README says it prints)."""
        out: list[tuple[str, list[str]]] = []
        pending = ""
        for line in self.text.splitlines():
            if not pending and line.startswith("#"):
                if out:
                    out[-1][1].append(line[1:].strip())
                continue
            if not line.strip() and not pending:
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            if _open_quote(pending + line):  # a quoted string goes on: the newline is part of it
                pending += line + "\n"
                continue
            out.append((pending + line, []))
            pending = ""
        return out


def _open_quote(command: str) -> bool:
    """Whether ``command`` ends inside a quoted string (as the shell reads it, comments aside)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return True
    return False


def tour_blocks(readme: Path = README) -> list[Block]:
    """The tour section's code blocks in order; AssertionError for one without a marker."""
    found = _SECTION.search(readme.read_text())
    assert found, "README.md has no '## A five-minute tour' section"
    section = found.group(1)
    blocks = []
    for fence in _FENCE.finditer(section):
        marker = _MARKER.search(section[: fence.start()])
        assert marker, f"a tour block has no <!-- tour: ... --> marker before it:\n{fence.group(0)[:200]}"
        blocks.append(Block(marker.group(1).strip(), fence.group(1), fence.group(2)))
    return blocks


def merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """A config file with a README snippet added, as a reader would add it: lists extended, maps merged."""
    out = dict(into)
    for key, value in more.items():
        if isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Tour:
    """Runs a tour's commands in ``folder`` (the folder the reader works in: ``./data`` under it is the server's
    data directory) against the server at ``url``."""

    folder: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)  # what the README exports
    user_key: str | None = None
    session_id: str | None = None
    thread_id: str | None = None

    def substitute(self, command: str) -> str:
        command = command.replace(README_URL, self.url).replace(".venv/bin/chatgate", CLI)
        if self.user_key is not None:
            command = command.replace("cg-...", self.user_key)
        if self.session_id is not None:
            command = command.replace("5f0c...", self.session_id)
        if self.thread_id is not None:
            command = command.replace("thr_3f9a...", self.thread_id)
        return command

    def environment(self) -> dict[str, str]:
        # The reader's shell: none of the test run's CHATGATE_ settings, only what the README exports.
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        return {**base, **self.env}

    def sh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.substitute(command)],
            cwd=self.folder,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", self.substitute(code)],
            cwd=self.folder,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
