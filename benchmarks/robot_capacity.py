"""``headway bench capacity``: how many 50 Hz real-time-chunking robots one server keeps supplied.

    headway bench capacity --task whack [--robots 8 16 32 64 96 128] [--duration 10] [--url ws://host:8000]

Open loop: the robots have no physics. Each robot is a ``RobotLoop`` (the client's own
control loop: its ``ActionBuffer``, the next request when ``s`` actions of the current chunk
have run, its own ``/v1/policy`` session through ``WebsocketPolicyLink``) driving a
``ReplayRobot`` that reports recorded states (``--states FILE.npy``, ``[T, S]``) or
synthetic ones, and applies actions to nothing. All robots tick from one scheduler thread on
their own staggered drift-free clocks (``run_loops``) and all sockets share one event-loop
thread, numpy only, so that the load generator stays cheap and the service is what is
measured, not the simulators (which is what ``headway bench robot`` at 16 robots runs into
on two cores).

It ramps the number of robots (``--robots``, one server for the whole ramp, fresh sessions
for each step) and, for every step, counts after ``--warmup-s``: ``underruns`` (ticks with
no planned action), ``d_p50``/``d_p99`` (delay in ticks, request to merge), the batch sizes
the server formed (``batch_p50``, ``batch_max``, ``batch_sizes``: size -> chunks), and over
the whole step ``requests``, ``replies`` (chunks merged), ``failures``, ``timeouts``; and after
warm-up the client's own tick lateness (``jitter_p99_ms``: when it is large, a late client
clock, not the server, is the limit). The ramp stops at the first step with underruns (``--keep-going`` runs them all);
``max_robots_zero_underruns`` is the most robots of a step without any. One JSON object on
stdout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np

SUMMARY = "open-loop capacity: most 50 Hz RTC robots one server keeps supplied; prints JSON"
DEFAULT_RAMP = (8, 16, 32, 64, 96, 128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="whack", help="shipped checkpoint to serve (default %(default)s)")
    parser.add_argument("--family", default="flow", choices=("flow", "diffusion"), help="policy family of the checkpoint")
    parser.add_argument("--robots", type=int, nargs="+", default=list(DEFAULT_RAMP),
                        help="robots per step of the ramp (default %(default)s)")
    parser.add_argument("--hz", type=float, default=50.0, help="control rate of every robot")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="seconds of each step not counted")
    parser.add_argument("--strategy", default="rtc", choices=("rtc", "naive", "sync"), help="execution strategy of every robot")
    parser.add_argument("--future-state", action="store_true", help="condition on the rolled-forward state (VLASH)")
    parser.add_argument("--states", type=Path, default=None, metavar="FILE.npy",
                        help="recorded states [T, S] to replay (default: a synthetic random walk)")
    parser.add_argument("--timeout-ticks", type=int, default=25, help="abandon a request unanswered this long")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one had underruns")
    parser.add_argument("--url", default=None, help="server to use (default: start one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic states")
    parser.add_argument("--rt-priority", type=int, default=50,
                        help="SCHED_FIFO priority of the robots' scheduler thread and the sockets' thread "
                             "(ignored without the privilege; 0 = normal scheduling)")


class ReplayRobot:
    """A robot without physics: ``observe`` reports the next row of ``states`` (from ``offset``,
    cycling), ``apply`` commands nothing; it counts the actions it was given."""

    def __init__(self, states: np.ndarray, offset: int = 0) -> None:
        self.states = np.ascontiguousarray(states, dtype=np.float32)
        self.index = offset % len(self.states)
        self.applied = 0

    def observe(self) -> dict[str, np.ndarray]:
        state = self.states[self.index]
        self.index = (self.index + 1) % len(self.states)
        return {"state": state}

    def apply(self, action: np.ndarray) -> None:
        self.applied += 1


def synthetic_states(state_dim: int, ticks: int, seed: int) -> np.ndarray:
    """``[ticks, state_dim]``: a smooth random walk of unit scale (the policy's cost does not
    depend on the values; its inputs only need to be finite and plausible)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.1, size=(ticks, state_dim))
    walk = np.zeros((ticks, state_dim))
    for t in range(1, ticks):
        walk[t] = 0.98 * walk[t - 1] + steps[t]
    return walk.astype(np.float32)


def _pct(values, q) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 3) if len(values) else None


def run_step(url: str, robots: int, args: argparse.Namespace, states: np.ndarray | None) -> dict:
    """One step of the ramp: ``robots`` fresh sessions for ``args.duration`` seconds."""
    from clients.policy_link import WebsocketPolicyLink
    from clients.robot_loop import RobotLoop, run_loops

    hello = {"strategy": args.strategy, "control_hz": args.hz, "future_state": bool(args.future_state)}
    links = [WebsocketPolicyLink(url, hello) for _ in range(robots)]
    if args.rt_priority:
        links[0].hub.set_priority(max(1, args.rt_priority - 1))
    try:
        model = [link.wait_ready(60)["model"] for link in links][0]
        table = states if states is not None else synthetic_states(model["state_dim"], 1000, args.seed)
        if table.ndim != 2 or table.shape[1] != model["state_dim"]:
            raise ValueError(f"states must be [T, {model['state_dim']}], got {list(table.shape)}")
        loops = [RobotLoop(ReplayRobot(table, offset=i * 97), link, action_dim=model["action_dim"], hz=args.hz,
                           timeout_ticks=args.timeout_ticks) for i, link in enumerate(links)]
        marks: list = []

        def schedule() -> None:
            run_loops(loops, args.warmup_s, None, args.rt_priority or None)
            marks.extend(copy.deepcopy(loop.stats) for loop in loops)
            run_loops(loops, args.duration - args.warmup_s, None, args.rt_priority or None)

        # A full garbage collection stops every thread for milliseconds; the loops make no
        # reference cycles worth collecting during a step.
        gc.collect()
        gc.freeze()
        gc.disable()
        scheduler = threading.Thread(target=schedule, name="robots", daemon=True)
        scheduler.start()
        scheduler.join()
    finally:
        gc.enable()
        for link in links:
            link.close()

    counted = [loop.stats.since(mark) for loop, mark in zip(loops, marks)]
    delay = [d for st in counted for d in st.delay_ticks]
    batch = [int(b) for st in counted for b in st.batch_sizes]
    jitter = [j for st in counted for j in st.jitter_ms]
    whole = [loop.stats for loop in loops]
    return {
        "robots": robots,
        "underruns": sum(st.underruns for st in counted),
        "ticks": sum(st.ticks for st in counted),
        "d_p50": _pct(delay, 50), "d_p99": _pct(delay, 99),
        "batch_p50": _pct(batch, 50), "batch_max": max(batch, default=None),
        "batch_sizes": {str(size): n for size, n in sorted(Counter(batch).items())},
        "requests": sum(st.requests for st in whole),
        "replies": sum(st.chunks for st in whole),
        "failures": sum(st.failures for st in whole),
        "timeouts": sum(st.timeouts for st in whole),
        "late_replies_dropped": sum(st.late_replies_dropped for st in whole),
        "warmup_ticks": sum(st.warmup_ticks for st in whole),
        "jitter_p99_ms": _pct(jitter, 99),
    }


def run_ramp(url: str, args: argparse.Namespace) -> dict:
    """Every step of the ramp against the server at ``url`` (``/v1/policy``)."""
    states = np.load(args.states) if args.states is not None else None
    steps = []
    for robots in args.robots:
        step = run_step(url, robots, args, states)
        steps.append(step)
        print(json.dumps(step), file=sys.stderr, flush=True)
        if step["underruns"] and not args.keep_going:
            break
    supplied = [step["robots"] for step in steps if step["underruns"] == 0]
    return {
        "task": args.task, "family": args.family, "strategy": args.strategy, "future_state": bool(args.future_state),
        "hz": args.hz, "duration_s": args.duration, "warmup_s": args.warmup_s,
        "states": str(args.states) if args.states is not None else "synthetic",
        "max_robots_zero_underruns": max(supplied, default=0),
        "steps": steps,
    }


def main(args: argparse.Namespace) -> int:
    from clients.server_process import ServerProcess

    if not 0 <= args.warmup_s < args.duration:
        print("headway bench capacity: need 0 <= --warmup-s < --duration", file=sys.stderr)
        return 2
    # The scheduler and socket threads must get the interpreter lock back promptly.
    sys.setswitchinterval(0.0005)
    if args.url:
        result = run_ramp(args.url.rstrip("/") + "/v1/policy", args)
    else:
        model = args.task if args.family == "flow" else f"{args.task}:{args.family}"
        capacity = str(max(256, *args.robots))
        with ServerProcess(["--model", model, "--capacity", capacity]) as server:
            result = run_ramp(server.url("/v1/policy"), args)
    print(json.dumps(result))
    return 0
