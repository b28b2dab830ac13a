"""``headway bench robot``: simulated robots, each in its own real-time control loop, against a server.

    headway bench robot --task whack --robots 8 --hz 50 --duration 30 --strategy rtc [--future-state]
                        [--inject-latency 60] [--url ws://host:8000]

Starts ``headway serve --model TASK`` in a separate process (unless ``--url``), then runs
``--robots`` ``RobotLoop``s at ``--hz``, each driving its own ``SimRobot`` (the physics
advances on the robot's own ticks) through its own ``/v1/policy`` session. The loops tick
on their own staggered drift-free clocks from one scheduler thread (``run_loops``), so that
many robots in one Python process do not measure the interpreter lock instead of the
service; ``--thread-per-robot`` gives each its own thread.
``--inject-latency MS`` delays every message by MS/2 each way on the client side, to
emulate a remote GPU. Everything counted after ``--warmup-s`` (first calls, connection
set-up) is reported as one JSON object on stdout:

``solve_rate`` and ``episodes`` (episodes finished after warm-up), ``d_p50``/``d_p99``
(measured delay, ticks), ``underruns`` (ticks with no planned action after warm-up, all
robots), ``jitter_p99_ms`` (lateness of ticks against the drift-free schedule),
``seam_jerk`` (mean ||a_t - 2a_{t-1} + a_{t-2}|| at chunk switches), ``batch_p50`` (the
server's batch size per chunk), plus the settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time

import numpy as np

SUMMARY = "simulated robots in real time against a server; prints JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="whack", help="simulated task (default: whack, the one with sudden target changes)")
    parser.add_argument("--family", default="flow", choices=("flow", "diffusion"), help="policy family served (default %(default)s)")
    parser.add_argument("--robots", type=int, default=8, help="simulated robots, one session each (default %(default)s)")
    parser.add_argument("--hz", type=float, default=50.0, help="control rate of every robot")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of running, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="seconds not counted at the start")
    parser.add_argument("--strategy", default="rtc", choices=("rtc", "naive", "sync"),
                        help="execution strategy asked for in every hello (default %(default)s)")
    parser.add_argument("--future-state", action="store_true", help="condition on the rolled-forward state (VLASH)")
    parser.add_argument("--beta", type=float, default=None, help="max guidance weight (server default if unset)")
    parser.add_argument("--s", type=int, default=None, help="execution horizon (default: chosen from d)")
    parser.add_argument("--no-batch-hold", action="store_true",
                        help="serve each request at once instead of holding it (within d) to batch robots")
    parser.add_argument("--inject-latency", type=float, default=0.0, metavar="MS",
                        help="client-side network delay, MS/2 each way")
    parser.add_argument("--timeout-ticks", type=int, default=25, help="abandon a request unanswered this long")
    parser.add_argument("--url", default=None, help="server to use (default: start one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the robots' episodes (default %(default)s)")
    parser.add_argument("--rt-priority", type=int, default=50,
                        help="SCHED_FIFO priority of the robots' scheduler thread, as control loops run "
                             "(ignored without the privilege; 0 = normal scheduling)")
    parser.add_argument("--thread-per-robot", action="store_true",
                        help="run each robot's loop in a thread of its own (default: one scheduler "
                             "thread ticks every robot on its own staggered clock)")


def _pct(values, q):
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 3) if len(values) else None


def run_robots(url: str, args: argparse.Namespace) -> dict:
    from clients.policy_link import WebsocketPolicyLink
    from clients.robot_loop import RobotLoop, run_loops
    from clients.sim_robot import SimRobot

    hello = {"strategy": args.strategy, "control_hz": args.hz, "future_state": bool(args.future_state)}
    if args.beta is not None:
        hello["beta"] = args.beta
    if args.s is not None:
        hello["s"] = args.s
    if args.no_batch_hold:
        hello["batch_hold"] = False
    links = [WebsocketPolicyLink(url, hello, inject_latency_ms=args.inject_latency) for _ in range(args.robots)]
    if args.rt_priority:
        links[0].hub.set_priority(max(1, args.rt_priority - 1))
    try:
        meta = [link.wait_ready(60)["model"] for link in links][0]
        robots = [SimRobot(args.task, seed=args.seed * 1000 + i) for i in range(args.robots)]
        loops = [RobotLoop(robot, link, action_dim=meta["action_dim"], hz=args.hz,
                           timeout_ticks=args.timeout_ticks, on_underrun=robot.hold_action)
                 for robot, link in zip(robots, links)]
        # A full garbage collection stops every thread for milliseconds; the loops allocate
        # no reference cycles worth collecting during a run, so collect now and pause it.
        gc.collect()
        gc.freeze()
        gc.disable()
        started = time.monotonic()
        if args.thread_per_robot:
            threads = [loop.start(duration_s=args.duration, priority=args.rt_priority or None) for loop in loops]
        else:
            threads = [threading.Thread(target=run_loops, args=(loops, args.duration, None, args.rt_priority or None),
                                        daemon=True)]
            threads[0].start()
        time.sleep(max(0.0, started + args.warmup_s - time.monotonic()))
        at_warmup = [(loop.stats.underruns, len(loop.stats.jitter_ms), robot.episodes, robot.solved,
                      len(loop.stats.seam_jerk), len(loop.stats.delay_ticks), len(loop.stats.batch_sizes))
                     for loop, robot in zip(loops, robots)]
        for thread in threads:
            thread.join(args.duration + 30)
    finally:
        gc.enable()
        for link in links:
            link.close()

    underruns = episodes = solved = 0
    jitter, jerk, delay, batch = [], [], [], []
    timeouts = late = failures = 0
    for loop, robot, (u0, j0, e0, s0, k0, d0, b0) in zip(loops, robots, at_warmup):
        st = loop.stats
        underruns += st.underruns - u0
        episodes += robot.episodes - e0
        solved += robot.solved - s0
        jitter += list(st.jitter_ms)[j0:]
        jerk += list(st.seam_jerk)[k0:]
        delay += list(st.delay_ticks)[d0:]
        batch += list(st.batch_sizes)[b0:]
        timeouts += st.timeouts
        late += st.late_replies_dropped
        failures += st.failures
    rate = solved / episodes if episodes else None
    ci95 = 1.96 * np.sqrt(rate * (1 - rate) / episodes) if episodes else None
    return {
        "task": args.task, "family": args.family, "strategy": args.strategy, "future_state": bool(args.future_state),
        "batch_hold": not args.no_batch_hold, "robots": args.robots, "hz": args.hz, "duration_s": args.duration, "warmup_s": args.warmup_s,
        "inject_latency_ms": args.inject_latency,
        "solve_rate": None if rate is None else round(rate, 4),
        "ci95": None if ci95 is None else round(float(ci95), 4),
        "episodes": episodes,
        "d_p50": _pct(delay, 50), "d_p99": _pct(delay, 99),
        "underruns": underruns,
        "jitter_p50_ms": _pct(jitter, 50), "jitter_p99_ms": _pct(jitter, 99),
        "seam_jerk": round(float(np.mean(jerk)), 5) if jerk else None,
        "batch_p50": _pct(batch, 50),
        "timeouts": timeouts, "failures": failures, "late_replies_dropped": late,
    }


def main(args: argparse.Namespace) -> int:
    from clients.server_process import ServerProcess

    import torch

    # Robot threads must get the GIL back promptly when their tick is due, and the
    # simulators' tiny tensor ops must not fan out to thread pools that fight for 2 cores.
    sys.setswitchinterval(0.0005)
    torch.set_num_threads(1)
    if args.url:
        result = run_robots(args.url.rstrip("/") + "/v1/policy", args)
    else:
        model = args.task if args.family == "flow" else f"{args.task}:{args.family}"
        with ServerProcess(["--model", model]) as server:
            result = run_robots(server.url("/v1/policy"), args)
    print(json.dumps(result))
    return 0
