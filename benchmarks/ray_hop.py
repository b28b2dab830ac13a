"""``headway bench ray``: what Ray Serve costs and gives (``pip install 'headway[ray]'``); prints JSON.

    headway bench ray hop --clients 64 --rate 10 --standin-ms 20
    headway bench ray remote --clients 16 --rate 5 --standin-ms 100
    headway bench ray failover --robots 16

Each starts a local Ray instance (``--num-cpus``) and deploys ``headway ray serve``'s
application on it; ``--address auto`` uses a running cluster instead.

* ``hop``: ``headway bench load`` (open loop, stand-in) against one direct ``headway serve``
  process, then against one Ray Serve replica of the same server behind Ray's ingress, in
  the same run; ``hop_ratio_p50``/``_p99`` = Ray / direct latency, ``hop_ms_p50`` = the
  difference.
* ``remote``: two ingress replicas with the model in-process (each replica batches its own
  sessions), then two ingress replicas whose batched call runs in one executor deployment
  (batches merged across replicas): latency, the replies' engine batch size, and the model
  calls' batch sizes as the executor deployment saw them.
* ``failover``: ``--robots`` robot loops on ``/v1/policy`` over two replicas; one replica is
  killed; ``resume_s`` per robot that was on it (kill -> first chunk from the live
  replica), and the loops' counters (replies dropped, failures, underruns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

SUMMARY = "Ray Serve: ingress hop cost, remote executor batching, failover (JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=("hop", "remote", "failover"),
                        help="hop: ingress cost; remote: remote executor batching; failover: a replica killed")
    parser.add_argument("--clients", type=int, default=64, help="load sessions (default %(default)s)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per session (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of schedule (default %(default)s)")
    parser.add_argument("--standin-ms", type=float, default=None,
                        help="stand-in call (default: 20 for hop, 100 for remote, 5 for failover)")
    parser.add_argument("--budget-ms", type=float, default=None, help="per-request budget (default 5x the call + 50)")
    parser.add_argument("--robots", type=int, default=16, help="failover: robot loops (default %(default)s)")
    parser.add_argument("--executor-hold-ms", type=float, default=20.0,
                        help="remote: longest a free executor waits for every replica's batch to merge them (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="Ray's ingress port (default %(default)s)")
    parser.add_argument("--address", default=None, help="Ray cluster to use (default: start a local one)")
    parser.add_argument("--haproxy", action="store_true",
                        help="Ray Serve's HAProxy ingress instead of its Python proxy (RAY_SERVE_ENABLE_HA_PROXY=1)")
    parser.add_argument("--num-cpus", type=float, default=2, help="CPUs of the local Ray instance (default %(default)s)")


def _ray_args(args: argparse.Namespace, *extra: str) -> argparse.Namespace:
    from stream import ray_serve

    parser = argparse.ArgumentParser()
    ray_serve.add_arguments(parser)
    return parser.parse_args(["--model", "standin", "--standin-ms", str(args.standin_ms), "--port", str(args.port),
                              "--budget-ms", str(args.budget_ms), "--capacity", str(max(256, args.clients)),
                              "--replica-cpus", "0.1", *extra])


def _load(url: str | None, args: argparse.Namespace) -> dict:
    """``headway bench load`` against ``url`` (None: a ``headway serve`` it starts)."""
    from benchmarks import load

    parser = argparse.ArgumentParser()
    load.add_arguments(parser)
    argv = ["--clients", str(args.clients), "--rate", str(args.rate), "--duration", str(args.duration),
            "--standin-ms", str(args.standin_ms), "--budget-ms", str(args.budget_ms)]
    largs = parser.parse_args(argv + (["--url", url] if url else []))
    if url is None:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            load.main(largs)
        return json.loads(out.getvalue().strip().splitlines()[-1])
    import uvloop

    start = time.perf_counter()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(load.drive(url, largs, None))
    return load.summarize(tally, largs, time.perf_counter() - start)


KEYS = ("achieved_hz", "wanted_hz", "p50_ms", "p99_ms", "max_ms", "errors", "deadline_misses", "batch_size_mean",
        "server_total_ms_p50", "server_total_ms_p99")


def _brief(result: dict) -> dict:
    return {k: result.get(k) for k in KEYS}


def _start_ray(args: argparse.Namespace):
    import ray

    from stream import ray_serve

    ray_serve.ray_environment(haproxy=args.haproxy)
    ray.init(address=args.address or "local",  # local: a new instance, never one found running
             num_cpus=None if args.address else args.num_cpus, include_dashboard=False,
             logging_level="ERROR")
    ray_serve.start_serve(_ray_args(args))


def _stop_ray() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def hop(args: argparse.Namespace) -> dict:
    from stream import ray_serve

    direct = _load(None, args)
    _start_ray(args)
    try:
        ray_serve.run_app(_ray_args(args, "--replicas", "1"))
        time.sleep(2)
        via_ray = _load(f"ws://127.0.0.1:{args.port}/", args)
    finally:
        _stop_ray()
    return {"mode": "hop", "proxy": "haproxy" if args.haproxy else "python", "standin_ms": args.standin_ms, "clients": args.clients, "rate": args.rate,
            "direct": _brief(direct), "ray_1_replica": _brief(via_ray),
            "hop_ratio_p50": round(via_ray["p50_ms"] / direct["p50_ms"], 2),
            "hop_ratio_p99": round(via_ray["p99_ms"] / direct["p99_ms"], 2),
            "hop_ms_p50": round(via_ray["p50_ms"] - direct["p50_ms"], 2)}


def remote(args: argparse.Namespace) -> dict:
    import numpy as np
    from ray import serve

    from stream import ray_serve

    _start_ray(args)
    out: dict = {"mode": "remote", "standin_ms": args.standin_ms, "clients": args.clients, "rate": args.rate}
    try:
        ray_serve.run_app(_ray_args(args, "--replicas", "2"))
        time.sleep(2)
        out["in_process_2_replicas"] = _brief(_load(f"ws://127.0.0.1:{args.port}/", args))
        serve.delete(ray_serve.APP_NAME)
        ray_serve.run_app(_ray_args(args, "--replicas", "2", "--remote-executor",
                                    "--executor-hold-ms", str(args.executor_hold_ms)))
        time.sleep(2)
        executor = serve.get_deployment_handle("HeadwayExecutor", app_name=ray_serve.APP_NAME)
        executor.reset_stats.remote().result()
        out["remote_executor_2_replicas"] = _brief(_load(f"ws://127.0.0.1:{args.port}/", args))
        stats = executor.stats.remote().result()
        sizes, merged = np.array(stats["batch_sizes"]), np.array(stats["calls_per_batch"])
        out["executor_calls"] = int(sizes.size)
        out["executor_batch_mean"] = round(float(sizes.mean()), 2) if sizes.size else None
        out["executor_batch_p50"] = float(np.median(sizes)) if sizes.size else None
        out["executor_batch_max"] = int(sizes.max()) if sizes.size else None
        out["engine_batches_merged_mean"] = round(float(merged.mean()), 2) if merged.size else None
        out["executor_calls_merging_2_or_more"] = int((merged >= 2).sum())
        out["executor_dropped_late"] = stats["dropped_late"]
    finally:
        _stop_ray()
    return out


def failover(args: argparse.Namespace) -> dict:
    import ray
    import numpy as np

    from clients.policy_link import WebsocketPolicyLink
    from clients.robot_loop import RobotLoop, run_loops
    from stream import ray_serve
    import threading

    class Robot:
        def __init__(self, i: int):
            self.state = np.random.default_rng(i).standard_normal(14).astype(np.float32)

        def observe(self):
            return {"state": self.state}

        def apply(self, action):
            pass

    _start_ray(args)
    try:
        ray_serve.run_app(_ray_args(args, "--replicas", "2"))
        url = f"ws://127.0.0.1:{args.port}/v1/policy"
        links = []
        for _ in range(args.robots):  # one at a time: Ray's router sees each replica's sessions
            links.append(WebsocketPolicyLink(url, {"strategy": "rtc", "control_hz": 50}, backoff_s=(0.05, 0.2)))
            links[-1].wait_ready(60)
        loops = [RobotLoop(Robot(i), link, 14, hz=50) for i, link in enumerate(links)]
        stop = threading.Event()
        runner = threading.Thread(target=run_loops, args=(loops, None, stop), daemon=True)
        runner.start()
        time.sleep(3)
        replicas = {}
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["name"].startswith("SERVE_REPLICA::headway#HeadwayReplica#"):
                actor = ray.get_actor(a["name"], namespace="serve")
                replicas[a["name"]] = (actor, ray.get(actor.get_num_ongoing_requests.remote()))
        victim = max(replicas, key=lambda name: replicas[name][1])
        chunks = [loop.stats.chunks for loop in loops]
        connects = [link.connects for link in links]
        killed = time.monotonic()
        ray.kill(replicas[victim][0], no_restart=True)
        resumed: dict[int, float] = {}
        deadline = killed + 60
        while time.monotonic() < deadline and len(resumed) < sum(1 for _ in loops):
            for i, (loop, link) in enumerate(zip(loops, links)):
                if i not in resumed and loop.stats.chunks > chunks[i] and (
                        link.connects > connects[i] or time.monotonic() - killed > 5):
                    resumed[i] = time.monotonic() - killed
            time.sleep(0.005)
        time.sleep(2)
        stop.set()
        runner.join(10)
        for link in links:
            link.close()
        moved = [i for i, link in enumerate(links) if link.connects > connects[i]]
        resume = sorted(round(resumed[i], 3) for i in moved if i in resumed)
        return {"mode": "failover", "robots": args.robots, "sessions_per_replica": [n for _, n in replicas.values()],
                "robots_moved": len(moved), "robots_resumed": len(resume), "resume_s": resume,
                "resume_s_max": max(resume) if resume else None,
                "late_replies_dropped": sum(loop.stats.late_replies_dropped for loop in loops),
                "link_replies_dropped": sum(link.replies_dropped for link in links),
                "failures": sum(loop.stats.failures for loop in loops),
                "timeouts": sum(loop.stats.timeouts for loop in loops),
                "underruns": sum(loop.stats.underruns for loop in loops)}
    finally:
        _stop_ray()


def main(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("headway bench ray: Ray is not installed; pip install 'headway[ray]'", file=sys.stderr)
        return 2
    if args.standin_ms is None:
        args.standin_ms = {"hop": 20.0, "remote": 100.0, "failover": 5.0}[args.mode]
    if args.budget_ms is None:
        args.budget_ms = 5 * args.standin_ms + 50
    result = {"hop": hop, "remote": remote, "failover": failover}[args.mode](args)
    print(json.dumps(result))
    return 0
