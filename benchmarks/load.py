"""``headway bench load``: open-loop load test of a policy endpoint; prints one JSON object.

    headway bench load --model standin --standin-ms 20 --clients 16 --rate 10 --duration 10
    headway bench load --url ws://gpu-box:8000/ --clients 4 --rate 50 --payload vla

Unless ``--url`` is given it starts ``headway serve`` in a separate process (on a free
port) and stops it afterwards.

Method (open loop, no coordinated omission): every client session has a fixed send
schedule ``t_n = t_0 + phase + n / rate``; phases are spread evenly over one period. A client
sends request n at ``t_n`` -- or, if the reply to n-1 came later than ``t_n``, as soon as it
comes (openpi's protocol is one request in flight) -- and its latency counts from
``min(t_n, actual send time)``: a server that stalls is charged for every request it
delayed. (The timer may wake a client up to ~1 ms early; counting from the actual send in
that case keeps early sends from hiding server time.)

Output keys: ``wanted_hz`` (clients x rate), ``achieved_hz`` (correct replies per second of
schedule), ``p50_ms`` ``p90_ms`` ``p99_ms`` ``p999_ms`` ``max_ms`` ``mean_ms`` (latency of
correct replies), ``deadline_misses`` (``deadline_exceeded`` replies plus correct replies
later than ``--budget-ms``), ``errors`` (any other error reply, wrong chunk, or lost
connection), ``error_codes``, ``requests``, ``batch_size_mean``, ``queue_ms_p50``,
``infer_ms_p50``, ``server_total_ms_p50``/``_p99`` (frame received -> reply encoded, from the
replies' ``server_timing``; the rest of a latency is transport and the client), and the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from clients.server_process import ServerProcess

from stream import wire

SUMMARY = "open-loop load test of a server; prints JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="server to load (default: start one in a separate process)")
    parser.add_argument("--model", default="standin", help="model for the started server (default %(default)s)")
    parser.add_argument("--standin-ms", type=float, default=20.0, help="stand-in call duration (default %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent sessions (default %(default)s)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per session (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of schedule (default %(default)s)")
    parser.add_argument("--payload", choices=("state", "vla"), default="state",
                        help="state: 14 floats; vla: 14 floats + two 224x224x3 uint8 images")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="per-request budget (default %(default)s)")
    parser.add_argument("--token", default=None, help="token for --url servers that require one")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the started server, repeatable (e.g. --server-arg=--batch-window-ms=1)")


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    late: int = 0
    requests: int = 0


def make_payloads(kind: str, seed: int, count: int = 4) -> list[tuple[bytes, np.ndarray]]:
    """``count`` encoded observations and their states (so replies can be checked)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        state = rng.standard_normal(14).astype(np.float32)
        obs: dict = {"state": state}
        if kind == "vla":
            obs["images"] = {name: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
                             for name in ("cam_high", "cam_wrist")}
        out.append((wire.packb(obs), state))
    return out


async def run_client(index: int, url: str, headers: dict, args: argparse.Namespace, t0: float,
                     expect, tally: Tally) -> None:
    """One session on its fixed schedule. ``expect(state)`` gives the correct chunk, if known."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    period = 1.0 / args.rate
    phase = period * index / args.clients
    count = int(args.duration * args.rate)
    payloads = make_payloads(args.payload, seed=index)
    expected = [None if expect is None else expect(state) for _, state in payloads]
    budget = args.budget_ms
    try:
        async with connect(url, compression=None, max_size=None, additional_headers=headers,
                           open_timeout=30) as ws:
            wire.unpackb(await ws.recv())  # metadata
            await ready.wait()
            for n in range(count):
                scheduled = t0 + phase + n * period
                delay = scheduled - 0.001 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame, _ = payloads[n % len(payloads)]
                want = expected[n % len(payloads)]
                sent = time.perf_counter()
                tally.requests += 1
                await ws.send(frame)
                reply = await ws.recv()
                latency = (time.perf_counter() - min(scheduled, sent)) * 1e3
                if isinstance(reply, str):
                    tally.codes[json.loads(reply).get("code", "unknown")] += 1
                    continue
                message = wire.unpackb(reply)
                actions = message.get("actions")
                if not isinstance(actions, np.ndarray) or (want is not None and (
                        actions.shape != want.shape or float(np.abs(actions - want).max()) > 1e-5)):
                    tally.codes["wrong_chunk"] += 1
                    continue
                tally.codes["ok"] += 1
                tally.latencies_ms.append(latency)
                if latency > budget:
                    tally.late += 1
                timing = message.get("server_timing", {})
                tally.queue_ms.append(timing.get("queue_ms", 0.0))
                tally.infer_ms.append(timing.get("infer_ms", 0.0))
                tally.server_ms.append(timing.get("total_ms", 0.0))
                tally.batch_sizes.append(timing.get("batch_size", 0))
    except (ConnectionClosed, OSError) as exc:
        tally.codes[f"connection:{type(exc).__name__}"] += 1


ready: asyncio.Event  # set once every client is connected; created inside the loop


async def drive(url: str, args: argparse.Namespace, expect) -> Tally:
    global ready
    ready = asyncio.Event()
    tally = Tally()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    # Clients connect first; the shared schedule starts once everyone had time to.
    t0 = time.perf_counter() + 1.0 + 0.02 * args.clients
    tasks = [asyncio.create_task(run_client(i, url, headers, args, t0, expect, tally)) for i in range(args.clients)]
    ready.set()
    await asyncio.gather(*tasks)
    return tally


def server_for(args: argparse.Namespace) -> ServerProcess:
    """The ``headway serve`` this benchmark starts when no ``--url`` is given."""
    return ServerProcess(["--model", args.model, "--standin-ms", str(args.standin_ms),
                          "--budget-ms", str(args.budget_ms), "--capacity", str(max(256, args.clients)),
                          *args.server_arg])


def summarize(tally: Tally, args: argparse.Namespace, wall_s: float) -> dict:
    lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.array([np.nan])
    ok = tally.codes.get("ok", 0)
    misses = tally.codes.get("deadline_exceeded", 0) + tally.late
    errors = sum(n for code, n in tally.codes.items() if code not in ("ok", "deadline_exceeded"))

    def pct(q: float) -> float:
        return round(float(np.percentile(lat, q)), 3)

    return {
        "wanted_hz": round(args.clients * args.rate, 2),
        "achieved_hz": round(ok / args.duration, 2),
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
        "max_ms": round(float(np.max(lat)), 3), "mean_ms": round(float(np.mean(lat)), 3),
        "deadline_misses": misses,
        "errors": errors,
        "error_codes": {code: n for code, n in tally.codes.items() if code != "ok"},
        "requests": tally.requests,
        "replies_ok": ok,
        "batch_size_mean": round(float(np.mean(tally.batch_sizes)), 2) if tally.batch_sizes else None,
        "queue_ms_p50": round(float(np.median(tally.queue_ms)), 3) if tally.queue_ms else None,
        "infer_ms_p50": round(float(np.median(tally.infer_ms)), 3) if tally.infer_ms else None,
        "server_total_ms_p50": round(float(np.median(tally.server_ms)), 3) if tally.server_ms else None,
        "server_total_ms_p99": round(float(np.percentile(tally.server_ms, 99)), 3) if tally.server_ms else None,
        "clients": args.clients, "rate": args.rate, "duration_s": args.duration, "payload": args.payload,
        "budget_ms": args.budget_ms, "standin_ms": None if args.url else args.standin_ms,
        "server": args.url or "spawned", "wall_s": round(wall_s, 2),
    }


def main(args: argparse.Namespace) -> int:
    import uvloop

    server = None
    url = args.url
    expect = None
    if url is None:
        try:
            server = server_for(args).start()
        except RuntimeError as exc:
            print(f"headway bench load: {exc}", file=sys.stderr)
            return 2
        url = server.url("/")
        if args.model == "standin":
            from policies.standin import standin_actions

            def expect(state: np.ndarray) -> np.ndarray:
                return standin_actions(state[None])[0]
    elif args.budget_ms and "budget_ms=" not in url:
        url += ("&" if "?" in url else "?") + f"budget_ms={args.budget_ms:g}"
    try:
        start = time.perf_counter()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            tally = runner.run(drive(url, args, expect))
        wall = time.perf_counter() - start
    finally:
        if server is not None:
            server.stop(timeout_s=30)
    print(json.dumps(summarize(tally, args, wall)))
    return 0
