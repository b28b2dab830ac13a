"""``headway bench load`` end to end, briefly: it starts its own server process, drives
sessions, checks every chunk and prints one JSON object with the documented keys."""

from __future__ import annotations

import json
import subprocess
import sys

from server_harness import ServerThread, standin
from stream.server import ServerConfig

KEYS = {"wanted_hz", "achieved_hz", "p50_ms", "p99_ms", "p999_ms", "max_ms", "deadline_misses", "errors"}


def run_bench(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "load", *argv],
                         capture_output=True, text=True, timeout=120, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, out.stdout  # exactly one JSON object
    return json.loads(lines[0])


# A budget no reply of a 2 ms stand-in comes near, even on two loaded cores: every reply is
# on time, so a miss counted is the bench's mistake.
GENEROUS_BUDGET_MS = "5000"


def test_bench_starts_its_own_server_and_reports_the_documented_keys():
    result = run_bench("--model", "standin", "--standin-ms", "2", "--clients", "3", "--rate", "10",
                       "--duration", "1", "--budget-ms", GENEROUS_BUDGET_MS)
    assert KEYS <= set(result)
    assert result["wanted_hz"] == 30 and result["requests"] == 30
    assert (result["errors"], result["replies_ok"], result["deadline_misses"]) == (0, 30, 0)


def test_bench_against_a_running_server_with_vla_payload():
    with ServerThread([standin(1)], ServerConfig(token="tk")) as server:
        result = run_bench("--url", server.url, "--token", "tk", "--clients", "2", "--rate", "10",
                           "--duration", "1", "--payload", "vla", "--budget-ms", GENEROUS_BUDGET_MS)
    assert (result["errors"], result["replies_ok"], result["deadline_misses"]) == (0, 20, 0)
    assert result["server"] == server.url
