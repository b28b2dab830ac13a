"""``headway bench robot``: simulated robots, each in its own real-time control loop, against a server.

    headway bench robot --task whack --robots 8 --hz 50 --duration 30 --strategy rtc [--future-state]
                        [--inject-latency 60] [--url ws://host:8000]
    headway bench robot --tasks balance,whack,slalom,catch --strategies naive,rtc,rtc_future
                        [--families flow,diffusion] [--out DIR]

Starts ``headway serve --model TASK`` in a separate process (unless ``--url``), then runs
``--robots`` ``RobotLoop``s at ``--hz``, each driving its own ``SimRobot`` (the physics
advances on the robot's own ticks) through its own ``/v1/policy`` session. The loops tick
on their own staggered drift-free clocks from one scheduler thread (``run_loops``), so that
many robots in one Python process do not measure the interpreter lock instead of the
service; ``--thread-per-robot`` gives each its own thread.
``--inject-latency MS`` delays every message by MS/2 each way on the client side, to
emulate a remote GPU. ``--standin-ms MS`` serves the stand-in policy instead (every batched
call takes MS, whatever its size: load without a task), driven by robots that observe a
fixed state; there is no solve rate then, but d, s, underruns and failures are measured. Everything counted after ``--warmup-s`` (first calls, connection
set-up) is reported as one JSON object on stdout:

``solve_rate`` and ``episodes`` (episodes finished after warm-up), ``d_p50``/``d_p99``
(measured delay, ticks), ``underruns`` (ticks with no planned action after warm-up, all
robots), ``jitter_p99_ms`` (lateness of ticks against the drift-free schedule),
``seam_jerk`` (mean ||a_t - 2a_{t-1} + a_{t-2}|| at chunk switches), ``batch_p50`` (the
server's batch size per chunk), ``s_p50``/``s_max`` (the execution horizon the server chose
per chunk) and ``s_above_d`` (chunks whose s exceeded max(d, 1): lengthened for load), plus
the settings. ``ci95`` is the larger side of the 95% Wilson interval, as in
``headway bench rtc``. ``--strategy rtc_future`` is ``rtc`` with ``--future-state``.

**Sweep** (``--tasks``, ``--strategies`` or ``--families`` given): every (task, family) gets one
server (``headway serve --model TASK[:FAMILY]``, its defaults), against which each strategy
runs in turn as above (same seeds, so the same episodes). Prints ONE JSON array, a row per
cell, also written to ``DIR/robot_sweep.json``; each row adds ``in_process_solve_rate`` and
``in_process_ci95``: the in-process sweep's (``docs/rtc_sweep.json``, or
``docs/rtc_sweep_diffusion.json``) at the d the cell measured (``d_p50``) and s = max(1, d),
or null where it has no such row. ``DIR/robot_sweep.png`` plots the served cells at their
measured d over the in-process curves, a panel per (task, family).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.rtc import wilson_half_width

SUMMARY = "simulated robots in real time against a server; prints JSON"

SWEEP_STRATEGIES = ("naive", "rtc", "rtc_future", "sync")
DOCS = Path(__file__).resolve().parent.parent / "docs"
IN_PROCESS_SWEEPS = {"flow": DOCS / "rtc_sweep.json", "diffusion": DOCS / "rtc_sweep_diffusion.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="whack", help="simulated task (default: whack, the one with sudden target changes)")
    parser.add_argument("--family", default="flow", choices=("flow", "diffusion"), help="policy family served (default %(default)s)")
    parser.add_argument("--robots", type=int, default=8, help="simulated robots, one session each (default %(default)s)")
    parser.add_argument("--hz", type=float, default=50.0, help="control rate of every robot")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of running, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="seconds not counted at the start")
    parser.add_argument("--strategy", default="rtc", choices=("rtc", "naive", "sync", "rtc_future"),
                        help="execution strategy asked for in every hello; rtc_future: rtc with --future-state "
                             "(default %(default)s)")
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
    parser.add_argument("--standin-ms", type=float, default=None, metavar="MS",
                        help="serve the stand-in policy (each batched call MS) instead of --task's checkpoint")
    parser.add_argument("--tasks", default=None, help="sweep: comma-separated tasks (default: --task)")
    parser.add_argument("--strategies", default=None,
                        help=f"sweep: comma-separated strategies out of {','.join(SWEEP_STRATEGIES)} (default: --strategy)")
    parser.add_argument("--families", default=None, help="sweep: comma-separated policy families (default: --family)")
    parser.add_argument("--out", type=Path, default=Path("out/robot_sweep"),
                        help="sweep: directory for robot_sweep.json and robot_sweep.png")
    parser.add_argument("--thread-per-robot", action="store_true",
                        help="run each robot's loop in a thread of its own (default: one scheduler "
                             "thread ticks every robot on its own staggered clock)")


def _pct(values, q):
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 3) if len(values) else None


class StandinRobot:
    """A robot for the stand-in policy: observes a fixed state, applies whatever it is given,
    never finishes an episode (load without a task)."""

    episodes = solved = 0

    def __init__(self, state_dim: int) -> None:
        self.state = np.linspace(-1.0, 1.0, state_dim).astype(np.float32)

    def observe(self) -> dict[str, np.ndarray]:
        return {"state": self.state}

    def apply(self, action: np.ndarray) -> None:
        pass

    def hold_action(self, last: np.ndarray | None = None) -> np.ndarray | None:
        return last


def run_robots(url: str, args: argparse.Namespace) -> dict:
    from clients.policy_link import WebsocketPolicyLink
    from clients.robot_loop import RobotLoop, run_loops
    from clients.sim_robot import SimRobot

    future_state = bool(args.future_state) or args.strategy == "rtc_future"
    strategy = "rtc" if args.strategy == "rtc_future" else args.strategy
    hello = {"strategy": strategy, "control_hz": args.hz, "future_state": future_state}
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
        if args.standin_ms is not None:
            robots = [StandinRobot(meta["state_dim"]) for _ in range(args.robots)]
        else:
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
                      len(loop.stats.seam_jerk), len(loop.stats.delay_ticks), len(loop.stats.batch_sizes),
                      len(loop.stats.execution_horizons), loop.stats.s_above_d,
                      len(getattr(robot, "reaction_ticks", ())))
                     for loop, robot in zip(loops, robots)]
        for thread in threads:
            thread.join(args.duration + 30)
    finally:
        gc.enable()
        for link in links:
            link.close()

    underruns = episodes = solved = 0
    jitter, jerk, delay, batch, horizons = [], [], [], [], []
    timeouts = late = failures = 0
    s_above_d = 0
    reactions: list[float] = []
    for loop, robot, (u0, j0, e0, s0, k0, d0, b0, h0, a0, r0) in zip(loops, robots, at_warmup):
        reactions += list(getattr(robot, "reaction_ticks", ()))[r0:]
        st = loop.stats
        underruns += st.underruns - u0
        episodes += robot.episodes - e0
        solved += robot.solved - s0
        jitter += list(st.jitter_ms)[j0:]
        jerk += list(st.seam_jerk)[k0:]
        delay += list(st.delay_ticks)[d0:]
        batch += list(st.batch_sizes)[b0:]
        horizons += list(st.execution_horizons)[h0:]
        s_above_d += st.s_above_d - a0
        timeouts += st.timeouts
        late += st.late_replies_dropped
        failures += st.failures
    rate = solved / episodes if episodes else None
    ci95 = wilson_half_width(solved, episodes) if episodes else None
    return {
        "task": args.task if args.standin_ms is None else f"standin {args.standin_ms:g} ms",
        "family": args.family if args.standin_ms is None else None,
        "strategy": args.strategy, "future_state": future_state,
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
        "s_p50": _pct(horizons, 50), "s_max": max(horizons) if horizons else None, "s_above_d": s_above_d,
        "timeouts": timeouts, "failures": failures, "late_replies_dropped": late,
        # goal-conditioned tasks (table): ms from a goal change until the gripper heads for it
        "reaction_ms_p50": _pct([r * 1000.0 / args.hz for r in reactions], 50),
        "reaction_ms_mean": round(float(np.mean(reactions)) * 1000.0 / args.hz, 1) if reactions else None,
        "reactions": len(reactions),
    }


def _model_name(task: str, family: str) -> str:
    return task if family == "flow" else f"{task}:{family}"


def _split(value: str | None, default: str) -> list[str]:
    return [item.strip() for item in (value or default).split(",") if item.strip()]


def in_process_reference(rows: list[dict], task: str, family: str, strategy: str, d: float | None) -> dict | None:
    """The in-process sweep's row for (task, family, strategy) at delay ``round(d)`` (its s is
    max(1, d)), or None where the sweep has none."""
    if d is None:
        return None
    target = int(round(d))
    return next((r for r in rows if r["task"] == task and r.get("policy", "flow") == family
                 and r["strategy"] == strategy and r["d"] == target), None)


def _in_process_rows(family: str) -> list[dict]:
    path = IN_PROCESS_SWEEPS.get(family)
    return json.loads(path.read_text()) if path is not None and path.exists() else []


def run_sweep(args: argparse.Namespace) -> list[dict]:
    """Every (task, family, strategy) cell, one server per (task, family); see the module docstring."""
    from clients.server_process import ServerProcess

    tasks = _split(args.tasks, args.task)
    strategies = _split(args.strategies, args.strategy)
    families = _split(args.families, args.family)
    unknown = [s for s in strategies if s not in SWEEP_STRATEGIES] + [f for f in families if f not in IN_PROCESS_SWEEPS]
    if unknown:
        raise SystemExit(f"headway bench robot: unknown strategies or families {unknown}")
    rows = []
    for family in families:
        reference = _in_process_rows(family)
        for task in tasks:
            with ServerProcess(["--model", _model_name(task, family)]) as server:
                for strategy in strategies:
                    cell = argparse.Namespace(**{**vars(args), "task": task, "family": family, "strategy": strategy,
                                                 "future_state": False})
                    row = run_robots(server.url("/v1/policy"), cell)
                    ref = in_process_reference(reference, task, family, strategy, row["d_p50"])
                    row["in_process_solve_rate"] = None if ref is None else round(ref["solve_rate"], 4)
                    row["in_process_ci95"] = None if ref is None else round(ref["ci95"], 4)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def plot_sweep(rows: list[dict], path: Path) -> None:
    """A panel per (task, family): the in-process sweep's solve rate against d (lines, 95%
    intervals) and the served cells at the d they measured (filled squares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["task"], r["family"]) for r in rows))
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    colours = {name: f"C{i}" for i, name in enumerate(SWEEP_STRATEGIES)}
    for ax, (task, family) in zip(axes.flat, panels):
        reference = _in_process_rows(family)
        strategies = list(dict.fromkeys(r["strategy"] for r in rows if (r["task"], r["family"]) == (task, family)))
        for strategy in strategies:
            pts = sorted((r["d"], r["solve_rate"], r["ci95"]) for r in reference
                         if r["task"] == task and r["strategy"] == strategy)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, color=colours[strategy], linestyle="-", marker="o", markersize=3,
                            capsize=2, linewidth=1.0, alpha=0.6, label=f"{strategy}, in process")
        for i, strategy in enumerate(strategies):
            for r in rows:
                if (r["task"], r["family"], r["strategy"]) != (task, family, strategy) or r["solve_rate"] is None:
                    continue
                x = (r["d_p50"] or 0.0) + 0.06 * (i - (len(strategies) - 1) / 2)  # side by side at one d
                ax.errorbar([x], [r["solve_rate"]], yerr=[r["ci95"]], color=colours[strategy], marker="s",
                            markersize=7, linestyle="none", capsize=3, label=f"{strategy}, served (s p50 {r['s_p50']})")
        ax.set_title(f"{task}, {family} policy: served (squares) and in process")
        ax.set_xlabel("inference delay d [ticks] (in process: s = max(1, d))")
        ax.set_ylabel("solve rate")
        ax.set_ylim(-0.02, 1.02)
        served_d = [r["d_p50"] or 0.0 for r in rows if (r["task"], r["family"]) == (task, family)]
        ax.set_xlim(-0.3, max(4.0, *served_d) + 0.3)  # the same d axis on every panel
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from clients.server_process import ServerProcess

    import torch

    # Robot threads must get the GIL back promptly when their tick is due, and the
    # simulators' tiny tensor ops must not fan out to thread pools that fight for 2 cores.
    sys.setswitchinterval(0.0005)
    torch.set_num_threads(1)
    if args.tasks or args.strategies or args.families:
        if args.url or args.standin_ms is not None:
            raise SystemExit("headway bench robot: a sweep starts its own servers of the tasks' checkpoints "
                             "(drop --url and --standin-ms)")
        rows = run_sweep(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "robot_sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
        plot_sweep(rows, args.out / "robot_sweep.png")
        print(json.dumps(rows))
        print(f"bench robot: {len(rows)} cells -> {args.out}/robot_sweep.json, robot_sweep.png", file=sys.stderr)
        return 0
    if args.url:
        result = run_robots(args.url.rstrip("/") + "/v1/policy", args)
    else:
        model = ["--model", _model_name(args.task, args.family)] if args.standin_ms is None \
            else ["--model", "standin", "--standin-ms", str(args.standin_ms)]
        with ServerProcess(model) as server:
            result = run_robots(server.url("/v1/policy"), args)
    print(json.dumps(result))
    return 0
