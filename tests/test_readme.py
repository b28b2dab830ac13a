"""Every example in README.md and docs/*.md runs as written, against a real server on loopback.

How a document's fenced blocks are read:

* ```` ```python ```` is a complete script: run with this interpreter from the repository
  root (which is on ``PYTHONPATH``, as ``make`` installs the checkout).
* ```` ```sh ```` (or ``bash``, ``shell``) runs with ``bash -euo pipefail`` from the
  repository root; ``headway`` on its ``PATH`` is this checkout's command line.
* ``<!-- not-run: REASON -->`` on the line before a block says why it is not run (it runs
  for minutes, until Ctrl-C, is a signature, ...). A reason is required.
* Any other language (``text``, ``json``) is not code. A block without a language fails:
  say what it is.

A document with runnable examples names the server they talk to, once, as
``<!-- examples-server: headway serve ARGS -->``. The examples say port 8000 (where
``make demo`` and ``headway serve`` listen); each server here listens on a free port and the
addresses ``127.0.0.1:8000``, ``localhost:8000`` and ``"127.0.0.1", 8000`` are rewritten to
it. An example that still says 8000 after that fails rather than talk to whatever listens
on 8000 on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python": "python", "py": "python", "sh": "shell", "bash": "shell", "shell": "shell"}
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->$")
SERVER = re.compile(r"^<!--\s*examples-server:\s*headway serve(.*?)-->$", re.M)
PORT_8000 = re.compile(r"""(127\.0\.0\.1|localhost)(:|["']\s*,\s*)8000\b""")
EXAMPLE_TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    document: Path
    line: int  # of the opening fence, 1-based
    language: str  # as written after the fence ("" when none)
    code: str
    not_run: str | None  # the reason of a <!-- not-run: ... --> marker before it, if any

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """"python" or "shell" for a runnable example, None for text."""
        return LANGUAGES.get(self.language)


def blocks_of(document: Path) -> list[Block]:
    lines = document.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped.startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        start, language = i, stripped[3:].strip()
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(previous)
        found.append(Block(document, start + 1, language, "\n".join(body) + "\n",
                           marker.group(1).strip() if marker else None))
        i += 1
    return found


def stray_not_run_markers(document: Path) -> list[int]:
    """Lines of not-run markers that do not stand right before a block (blank lines between are fine)."""
    lines = document.read_text().splitlines()
    stray = []
    for n, line in enumerate(lines):
        if NOT_RUN.match(line.strip()):
            following = next((l.strip() for l in lines[n + 1:] if l.strip()), "")
            if not following.startswith("```"):
                stray.append(n + 1)
    return stray


def server_args(document: Path) -> list[str] | None:
    found = SERVER.findall(document.read_text())
    return found[0].split() if len(found) == 1 else None


def pointed_at(code: str, port: int) -> str:
    return PORT_8000.sub(lambda m: f"{m.group(1)}{m.group(2)}{port}", code)


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]
EXAMPLES = [block for block in ALL_BLOCKS if block.kind]
# What the suite runs; a not-run block is checked only for its reason and its place.
RUNNABLE = [block for block in EXAMPLES if block.not_run is None]


def run_example(block: Block, port: int, workdir: Path) -> str | None:
    """Run ``block`` against the server on ``port``; None when it ran, else what went wrong."""
    code = pointed_at(block.code, port)
    if "8000" in code:
        return (f"{block.where} still says port 8000 after pointing it at the test server: write the "
                "address as 127.0.0.1:8000, localhost:8000 or (\"127.0.0.1\", 8000)")
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    headway = bin_dir / "headway"
    headway.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m stream.cli "$@"\n')
    headway.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = workdir / (block.where.replace("/", "_").replace(":", "_line") + (".py" if block.kind == "python" else ".sh"))
    script.write_text(code)
    command = [sys.executable, str(script)] if block.kind == "python" else ["bash", "-euo", "pipefail", str(script)]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{block.where} ({block.language}) did not finish within {EXAMPLE_TIMEOUT_S} s:\n{code}"
    if result.returncode != 0:
        return (f"{block.where} ({block.language}) does not run as written (exit {result.returncode}):\n{code}\n"
                f"--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return None


@pytest.fixture(scope="module")
def servers():
    """One running ``headway serve`` per distinct examples-server line, started when first needed."""
    running: dict[tuple[str, ...], ServerProcess] = {}

    def port_for(document: Path) -> int:
        args = tuple(server_args(document) or ())
        if args not in running:
            running[args] = ServerProcess(list(args), timeout_s=120).start()
        return running[args].port

    yield port_for
    for server in running.values():
        server.stop()


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: f"{block.where}-{block.kind}")
def test_example_runs_as_written(block, servers, tmp_path):
    problem = run_example(block, servers(block.document), tmp_path)
    if problem is not None:
        pytest.fail(problem, pytrace=False)


def test_every_block_says_its_language():
    assert [block.where for block in ALL_BLOCKS if not block.language] == []


def test_every_not_run_marker_gives_a_reason():
    assert [block.where for block in ALL_BLOCKS if block.not_run == ""] == []


def test_every_not_run_marker_stands_before_a_block():
    assert [f"{d.relative_to(ROOT)}:{n}" for d in DOCUMENTS for n in stray_not_run_markers(d)] == []


def test_every_document_with_runnable_examples_names_its_server_once():
    documents = {block.document for block in RUNNABLE}
    assert [str(d.relative_to(ROOT)) for d in sorted(documents) if server_args(d) is None] == []


def test_the_readme_has_runnable_python_and_shell_examples():
    kinds = {block.kind for block in RUNNABLE if block.document.name == "README.md"}
    assert kinds == {"python", "shell"}


def test_an_example_that_fails_is_reported_with_its_place(tmp_path):
    broken = Block(ROOT / "README.md", 7, "python", "import nosuchmodule\n", None)
    problem = run_example(broken, 1, tmp_path)
    assert problem is not None
    assert problem.startswith("README.md:7 (python) does not run as written (exit 1)")
    assert "ModuleNotFoundError: No module named 'nosuchmodule'" in problem


def test_an_example_that_still_says_8000_is_refused_unrun(tmp_path):
    stray = Block(ROOT / "README.md", 9, "sh", "curl -s http://0.0.0.0:8000/healthz\n", None)
    problem = run_example(stray, 1, tmp_path)
    assert problem is not None and problem.startswith("README.md:9 still says port 8000")


def test_addresses_of_port_8000_are_pointed_at_the_test_server():
    code = 'WebsocketClientPolicy("127.0.0.1", 8000)\n"ws://127.0.0.1:8000/v1/policy"\ncurl localhost:8000/healthz\n'
    assert pointed_at(code, 4321) == ('WebsocketClientPolicy("127.0.0.1", 4321)\n"ws://127.0.0.1:4321/v1/policy"\n'
                                      'curl localhost:4321/healthz\n')
