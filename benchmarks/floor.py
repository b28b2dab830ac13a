"""``headway bench floor``: Headway's per-request floor beside openpi's own server; prints JSON.

    headway bench floor --openpi-server-file /path/to/openpi/src/openpi/serving/websocket_policy_server.py

One client at 50 Hz (``headway bench load``'s open-loop client, latency from the scheduled
send time), no-op models on both sides: Headway serves the stand-in with 0 ms calls at ``/``;
openpi's ``WebsocketPolicyServer`` (the file of a fetched openpi snapshot, run by
``../shared/tools/openpi_peer_server.py`` around a stand-in that returns zeros: it needs only
``openpi-client`` and ``websockets``) answers the same observations. The two servers take
turns, ``--rounds`` times per payload (``state``: 14 floats; ``vla``: plus two 224x224 images),
so that both see the same machine; the pooled latencies of each give its p50/p99.

Output: one object per payload, ``{"payload", "headway": {p50_ms, p99_ms, ...}, "openpi":
{...}, "headway_minus_openpi_p50_ms", "..._p99_ms"}``, in a list.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from clients.server_process import ServerProcess

SUMMARY = "Headway's per-request floor beside openpi's own server, one client at 50 Hz; prints JSON"
PEER = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "openpi_peer_server.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--openpi-server-file", type=Path, required=True,
                        help="openpi's src/openpi/serving/websocket_policy_server.py (from a fetched snapshot)")
    parser.add_argument("--peer-script", type=Path, default=PEER,
                        help="the script that runs it around a stand-in policy (default %(default)s)")
    parser.add_argument("--payloads", nargs="+", default=["state", "vla"], choices=("state", "vla"),
                        help="observation kinds to measure (default: both)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per server and payload (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per turn (default %(default)s)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default %(default)s)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the Headway server, repeatable")


def _latencies(url: str, payload: str, args: argparse.Namespace) -> list[float]:
    import asyncio

    import uvloop

    from benchmarks.load import drive

    load_args = SimpleNamespace(clients=1, rate=args.rate, duration=args.duration, payload=payload, token=None,
                                budget_ms=1000.0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(drive(url, load_args, None))
    if set(tally.codes) != {"ok"}:
        raise RuntimeError(f"{url}: replies other than chunks: {dict(tally.codes)}")
    return tally.latencies_ms


def _summary(latencies: list[float]) -> dict:
    lat = np.array(latencies)
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "p999_ms": round(float(np.percentile(lat, 99.9)), 3), "max_ms": round(float(lat.max()), 3),
            "replies": len(lat)}


def main(args: argparse.Namespace) -> int:
    if not args.openpi_server_file.exists():
        print(f"headway bench floor: no openpi server file at {args.openpi_server_file}", file=sys.stderr)
        return 2
    headway = ServerProcess(["--model", "standin", "--standin-ms", "0", *args.server_arg])
    openpi = ServerProcess(["--server-file", str(args.openpi_server_file), "--horizon", "50"],
                           program=[sys.executable, str(args.peer_script)])
    rows = []
    with headway, openpi:
        for payload in args.payloads:
            pooled: dict[str, list[float]] = {"headway": [], "openpi": []}
            for round_ in range(args.rounds):
                order = ("headway", "openpi") if round_ % 2 == 0 else ("openpi", "headway")
                for name in order:
                    server = headway if name == "headway" else openpi
                    pooled[name] += _latencies(server.url("/"), payload, args)
            row = {"payload": payload, "headway": _summary(pooled["headway"]), "openpi": _summary(pooled["openpi"])}
            for q in ("p50_ms", "p99_ms"):
                row[f"headway_minus_openpi_{q}"] = round(row["headway"][q] - row["openpi"][q], 3)
            rows.append(row)
    print(json.dumps(rows))
    return 0
