"""``headway demo``: one server with every embedded model, and the page that shows them, live.

    headway demo                      # serve on 127.0.0.1:8000 until Ctrl-C; open http://127.0.0.1:8000/ui/
    headway demo --duration 20        # stop by itself
    headway demo --sim-robot          # also drive a simulated robot from Python (out/demo/live.png)

Starts one ``headway serve`` with every embedded model this checkout ships
(:func:`serve_arguments`: the shipped policies -- ``whack`` at ``/`` for the README's quick
starts, the goal-conditioned ``table`` for the page's robot, the stand-in at
``/?model=standin`` -- and the speech recogniser, the speech synthesiser and the language
model where their checkpoints exist) and prints the page's address: ``/ui/``, where a person
talks to the table robot (or types), watches it move and sees every latency.

``--sim-robot`` adds what the demo did before the page: a simulated robot whose ``RobotLoop``
ticks at 50 Hz against ``/v1/policy`` with real-time chunking and future-state rollout, and
every ``--refresh-s`` seconds ``OUT/live.png``: its last seconds of state and actions with
every chunk seam marked, and the loop's numbers (delay d, underruns, jitter, solve rate).
"""

from __future__ import annotations

import argparse
import json
import errno
import multiprocessing
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

SUMMARY = "serve every embedded model and the demo page at /ui/"
CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"


def serve_arguments(checkpoints: Path = CHECKPOINTS) -> list[str]:
    """The ``headway serve`` arguments of the demo's one server: every embedded model whose
    checkpoint is in ``checkpoints`` (a model not trained yet is left out; the page says
    what is missing)."""
    args = ["--model", "whack"]
    if (checkpoints / "table_flow.safetensors").exists():
        args += ["--model", "table"]
    return args + ["--model", "standin"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sim-robot", action="store_true",
                        help="also drive a simulated robot of --task from Python and draw OUT/live.png")
    parser.add_argument("--task", default="whack", help="the --sim-robot's task (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default %(default)s)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--out", default="out/demo", help="where live.png goes (default %(default)s)")
    parser.add_argument("--refresh-s", type=float, default=2.0,
                        help="seconds between redrawn pictures and printed status lines (default %(default)s)")
    parser.add_argument("--window-s", type=float, default=6.0, help="seconds of history in the picture")


class RecordingRobot:
    """Wraps a ``SimRobot``: remembers the last ticks' states and actions for the picture."""

    def __init__(self, robot, window: int):
        self.robot = robot
        self.states: deque = deque(maxlen=window)
        self.actions: deque = deque(maxlen=window)

    def observe(self):
        observation = self.robot.observe()
        self.states.append(observation["state"].copy())
        return observation

    def apply(self, action):
        self.actions.append(np.array(action, dtype=np.float32))
        self.robot.apply(action)

    def take_episode_boundary(self) -> bool:
        return self.robot.take_episode_boundary()


def snapshot(robot: RecordingRobot, loop) -> dict | None:
    """What the picture needs, copied out of the loop (cheap: no plotting here)."""
    states, actions = np.array(robot.states), np.array(robot.actions)
    n = min(len(states), len(actions))
    if n < 2:
        return None
    ticks = np.arange(loop.tick - n, loop.tick)
    return {"ticks": ticks, "states": states[-n:], "actions": actions[-n:],
            "seams": [t for t in list(loop.stats.seam_ticks) if t >= ticks[0]],
            "summary": loop.stats.summary(), "episodes": robot.robot.episodes,
            "solve_rate": robot.robot.solve_rate}


def draw(path: Path, snap: dict, task: str, hz: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = snap["ticks"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for j in range(snap["states"].shape[1]):
        top.plot(ticks / hz, snap["states"][:, j], lw=1, label=f"state[{j}]")
    for j in range(snap["actions"].shape[1]):
        bottom.plot(ticks / hz, snap["actions"][:, j], lw=1.2, label=f"action[{j}]")
    for axis in (top, bottom):
        for t in snap["seams"]:
            axis.axvline(t / hz, color="grey", lw=0.6, ls=":")
        axis.legend(loc="upper left", fontsize=7, ncol=4)
    summary, rate = snap["summary"], snap["solve_rate"]
    top.set_title(f"{task}: live robot against /v1/policy (rtc + future state); dotted lines = chunk seams\n"
                  f"d p50 {summary['d_p50']} ticks, underruns {summary['underruns']}, "
                  f"jitter p99 {summary['jitter_p99_ms'] or 0:.2f} ms, episodes {snap['episodes']}, "
                  f"solve rate {'-' if rate is None else f'{rate:.2f}'}", fontsize=9)
    bottom.set_xlabel("time [s]")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)  # readers never see a half-written picture


def paint(queue, path: Path, task: str, hz: float) -> None:
    """Child process: draws every snapshot it gets until it gets None. Plotting holds the
    GIL for ~100 ms a picture; in the robot's process that would be jitter. Ctrl-C reaches the
    whole process group: the parent stops this one (with None), so it ignores the signal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (snap := queue.get()) is not None:
        draw(path, snap, task, hz)


def main(args: argparse.Namespace) -> int:
    from clients.server_process import ServerProcess

    serve = serve_arguments()
    if args.sim_robot and args.task not in serve:
        serve += ["--model", args.task]
    server = ServerProcess(serve, port=args.port, timeout_s=180.0)
    try:
        server.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"headway demo: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        print(f"headway: serving {' '.join(serve)} on {server.url('/')}", flush=True)
        print(f"headway: open http://127.0.0.1:{server.port}/ui/ in a browser (Ctrl-C stops)", flush=True)
        if args.sim_robot:
            return run_sim_robot(args, server)
        try:
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while server.process.poll() is None and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    finally:
        server.stop()
    return 0


def run_sim_robot(args: argparse.Namespace, server) -> int:
    """A simulated robot of ``args.task`` against the server's ``/v1/policy``, with the live picture."""
    from clients.policy_link import WebsocketPolicyLink
    from clients.robot_loop import RobotLoop
    from clients.sim_robot import SimRobot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    link = WebsocketPolicyLink(server.url(f"/v1/policy?model={args.task}"), {"strategy": "rtc", "future_state": True})
    link.hub.set_priority(49)
    meta = link.wait_ready()["model"]
    hz = float(meta["control_hz"])
    sim = SimRobot(args.task, seed=0)
    robot = RecordingRobot(sim, window=int(args.window_s * hz))
    loop = RobotLoop(robot, link, action_dim=meta["action_dim"], hz=hz, on_underrun=sim.hold_action)
    loop.start(duration_s=args.duration, priority=50)  # SCHED_FIFO where permitted
    print(f"headway: simulated {args.task} robot running at {hz:.0f} Hz; live view in {out / 'live.png'} "
          f"(Ctrl-C stops)", flush=True)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    pictures = context.Queue(maxsize=1)
    painter = context.Process(target=paint, args=(pictures, out / "live.png", args.task, hz), daemon=True)
    painter.start()
    try:
        while loop._thread is not None and loop._thread.is_alive():
            time.sleep(args.refresh_s)
            snap = snapshot(robot, loop)
            if snap is not None and pictures.empty():
                pictures.put(snap)
            summary = loop.stats.summary()
            print(json.dumps({"t_s": round(time.monotonic() - started, 1), "episodes": sim.episodes,
                              "solve_rate": sim.solve_rate, "d_p50": summary["d_p50"],
                              "underruns": summary["underruns"], "chunks": summary["chunks"],
                              "jitter_p99_ms": summary["jitter_p99_ms"]}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        link.close()
        pictures.put(None)
        painter.join(10)
    return 0
