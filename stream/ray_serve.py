"""``headway ray serve``: Headway on Ray Serve (``pip install 'headway[ray]'``; docs/scale-out.md).

    headway ray serve --replicas 2 --model standin --standin-ms 20
    headway ray serve --autoscale 1..4 --target-sessions 64 --model standin
    headway ray serve --replicas 2 --remote-executor --model standin --standin-ms 100

Every replica is a whole Headway server behind Ray Serve's websocket ingress at
``ws://HOST:PORT/`` (``/``, ``/v1/policy``, ``/v1/chat``, ``/healthz``, ``/metrics``: the
endpoints of ``headway serve``, whose options it takes). ``--remote-executor`` runs the
first model's batched call in a separate deployment that merges the batches of all
replicas. Without ``--address`` it starts a local Ray instance; with ``--address auto`` it
joins the cluster ``ray start`` made. SIGTERM/SIGINT deletes the application: Ray stops each
replica, which drains its sessions (1001), and the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from stream import serve as headway_serve

SUMMARY = "serve on Ray Serve: replicas of whole Headway apps, or remote executors"
APP_NAME = "headway"


def ray_environment(haproxy: bool = False) -> None:
    """Set the variables the Ray instance started after this reads (a cluster that ``ray
    start`` made needs them set where each node started: docs/scale-out.md).

    * Ray's proxy prefers the replicas on its own node until they are full; a session is a
      request, so every session would land there: spread them.
    * Ray's proxy drops a killed replica's websockets without a close frame (1006):
      :func:`proxy_middlewares` closes them with 1012 instead.
    * ``haproxy``: Ray Serve's HAProxy ingress instead of its Python proxy (the middleware
      does not run there: a killed replica's sockets drop)."""
    os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", f"{__name__}.proxy_middlewares")
    if haproxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"


def proxy_middlewares() -> list:
    """What Ray's Python proxy wraps its ASGI app in (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``):
    :class:`stream.asgi.CloseAbandonedWebsockets`."""
    from starlette.middleware import Middleware

    from stream.asgi import CloseAbandonedWebsockets

    return [Middleware(CloseAbandonedWebsockets)]


def autoscale_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    try:
        low_n, high_n = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--autoscale wants MIN..MAX (e.g. 1..4), got {text!r}") from None
    if not sep or not 0 <= low_n <= high_n or high_n < 1:
        raise argparse.ArgumentTypeError(f"--autoscale wants MIN..MAX with 0 <= MIN <= MAX, MAX >= 1, got {text!r}")
    return low_n, high_n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    headway_serve.add_arguments(parser)
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default %(default)s)")
    scale.add_argument("--autoscale", type=autoscale_range, default=None, metavar="MIN..MAX",
                       help="autoscale between MIN and MAX replicas on open sessions")
    parser.add_argument("--target-sessions", type=float, default=64,
                        help="open sessions per replica autoscaling aims at (default %(default)s)")
    parser.add_argument("--autoscale-interval-s", type=float, default=1.0,
                        help="how often replicas report their sessions (default %(default)s)")
    parser.add_argument("--upscale-delay-s", type=float, default=5.0,
                        help="sessions above the target this long add a replica (default %(default)s)")
    parser.add_argument("--downscale-delay-s", type=float, default=30.0,
                        help="sessions below the target this long remove a replica (default %(default)s)")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0,
                        help="how long a stopping replica waits for its sessions to close (default %(default)s)")
    parser.add_argument("--remote-executor", action="store_true",
                        help="run the first model's batched call in a separate deployment (docs/scale-out.md)")
    parser.add_argument("--executor-replicas", type=int, default=1,
                        help="replicas of the executor deployment (default %(default)s)")
    parser.add_argument("--executor-hold-ms", type=float, default=20.0,
                        help="longest a free executor waits for every replica's batch to merge them (default %(default)s)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto': the one 'ray start' made; default: start a local one)")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--haproxy", action="store_true",
                        help="the local Ray instance's ingress is HAProxy, not Ray's Python proxy "
                             "(RAY_SERVE_ENABLE_HA_PROXY=1; on a 'ray start' cluster set it where you start)")
    parser.add_argument("--replica-cpus", type=float, default=0.5,
                        help="CPUs Ray reserves per replica (default %(default)s)")
    parser.add_argument("--replica-resource", default=None,
                        help="a custom Ray resource each replica needs one of (to place one replica per node)")


def epilog() -> str:
    return headway_serve.epilog()


def start_serve(args: argparse.Namespace) -> None:
    """Ray Serve's proxy on ``args.host:args.port`` (on the head node only)."""
    from ray import serve

    serve.start(http_options={"host": args.host, "port": args.port}, proxy_location="HeadOnly")


def run_app(args: argparse.Namespace, name: str = APP_NAME):
    """Deploy Headway's application; returns once every replica is up."""
    from ray import serve

    from stream.ray_deploy import build_app

    return serve.run(build_app(args), name=name, route_prefix="/")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import ray
        from ray import serve
    except ImportError:
        print("headway ray serve: Ray is not installed; pip install 'headway[ray]'", file=sys.stderr)
        return 2
    try:
        headway_serve.load_models(args)  # the errors a user can mend, before Ray starts
    except KeyError as exc:
        print(f"headway ray serve: {exc.args[0]} ('headway serve --help' says what each is)", file=sys.stderr)
        return 2
    if args.remote_executor and args.policy:
        print("headway ray serve: --remote-executor serves --model models (a plug-in policy runs in replica mode)",
              file=sys.stderr)
        return 2
    ray_environment(haproxy=args.haproxy)
    ray.init(address=args.address or "local",  # local: a new instance, never one found running
             num_cpus=args.num_cpus if args.address is None else None,
             include_dashboard=False, logging_level=logging.WARNING)
    start_serve(args)
    run_app(args)
    mode = "remote executor" if args.remote_executor else "replicas"
    scale = f"autoscale {args.autoscale[0]}..{args.autoscale[1]}" if args.autoscale else f"{args.replicas} replicas"
    logging.getLogger("headway.ray").info("listening on ws://%s:%d (%s, %s)", args.host, args.port, mode, scale)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timeout, so that the signal handlers run promptly
        pass
    serve.delete(APP_NAME)  # Ray stops the replicas; each drains its sessions with 1001
    serve.shutdown()
    ray.shutdown()
    return 0
