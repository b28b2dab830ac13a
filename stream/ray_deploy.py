"""Headway on Ray Serve: whole Headway apps as replicas, and the batched model call as a deployment.

Needs ``pip install 'headway[ray]'``; ``headway ray serve`` (:mod:`stream.ray_serve`) builds
and runs these; docs/scale-out.md says when to use which.

:class:`HeadwayReplica` -- the **replica mode**. Every replica is a whole Headway server
(sessions, engines, models) behind Ray Serve's websocket ingress (its FastAPI routes call
:class:`stream.asgi.HeadwayAsgi`), so a session lives on one replica for its life. Each
socket is one long ASGI request that holds one of the replica's ``max_ongoing_requests``,
so that limit is sized for sessions (Ray's default of 5 would cap a replica at 5 sockets),
and autoscaling on ``target_ongoing_requests`` scales on open sessions. When Ray stops a
replica (scale-down, rolling update, ``serve shutdown``) its sessions are drained: replies
owed are sent, then each closes with 1001, within ``graceful_shutdown_timeout_s``. Ray
Serve gives user code no hook before it waits for the ongoing requests (``__del__`` comes
after), so the replica watches Ray's own stopping flag (:func:`_replica_stopping`; a Ray
internal, read only).

:class:`HeadwayExecutor` and :class:`RayHost` -- the **remote executor mode**. The
sessions stay on the ingress replicas; each model's engine there forms its batch and sends
it as a typed :class:`~stream.hosts.RunBatch` (msgpack, as :class:`~stream.hosts.ProcessHost`
sends it) through a ``DeploymentHandle`` to the executor deployment, with the time left to
the batch's earliest deadline. The executor deployment merges the batches that arrive
together from all ingress replicas (it waits, briefly, for every engine's batch) into one model call,
drops a batch whose deadline has passed before its call starts (``deadline_exceeded``), and
splits the outputs back. Stateless models only: a stepped model's state slots (a chat KV
cache) live with its engine.
"""

# No ``from __future__ import annotations`` here: Ray Serve's class-based FastAPI views
# need the route parameters' annotations (WebSocket, Request) as classes, not strings.
import argparse
import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import FastAPI, Request, WebSocket
from ray import serve
from ray.serve.handle import DeploymentHandle

from stream import wire
from stream.asgi import HeadwayAsgi
from stream.errors import ProtocolError
from stream.hosts import (ExecutorHost, ExecutorSpec, HostMessage, InProcessHost, RunBatch, WorkItem, _decode,
                          _encode)
from stream.registry import LoadedModel
from stream.server import HeadwayServer

log = logging.getLogger("headway.ray")

app = FastAPI()


def _replica_stopping() -> bool | None:
    """Whether Ray Serve has begun stopping this replica (None: cannot tell here).

    Reads the replica actor's ``_shutting_down`` flag, set when Ray starts its graceful
    shutdown and before it waits for the ongoing requests -- the sessions -- to end."""
    try:
        import ray
        from ray._private.worker import global_worker

        actor_id = ray.get_runtime_context().get_actor_id()
        for key, actor in global_worker.actors.items():
            if str(getattr(key, "hex", lambda: key)()) == actor_id or str(key) == actor_id:
                return bool(actor._replica_impl._shutting_down)
    except Exception:  # another Ray version: no drain before stop, sessions end when Ray ends them
        return None
    return None


@serve.deployment
@serve.ingress(app)
class HeadwayReplica:
    """One whole Headway server per replica; ``args`` are ``headway serve``'s options."""

    def __init__(self, args: argparse.Namespace, executor: DeploymentHandle | None = None):
        from stream import serve as headway_serve
        from stream.ray_deploy import RayHost  # by name: Ray ships this class by value

        logging.getLogger("websockets").setLevel(logging.WARNING)
        models = headway_serve.load_models(args)
        config = headway_serve.config_from_args(args)
        host_for = None
        if executor is not None:  # the first model runs in the executor deployment, others here
            remote, budget_s = models[0].name, config.budget_s
            caller = serve.get_replica_context().replica_id.unique_id

            def host_for(model: LoadedModel) -> ExecutorHost:
                if model.name != remote:
                    return InProcessHost(model.executor_spec)
                return RayHost(executor, model.name, caller=caller, timeout_s=max(10.0, 10 * budget_s))

        self.server = HeadwayServer(models, config, host_for=host_for)
        self.asgi = HeadwayAsgi(self.server)
        self._watcher: asyncio.Task | None = None

    async def _started(self) -> None:
        await self.asgi.start()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_for_stop())

    async def _watch_for_stop(self) -> None:
        while True:
            stopping = _replica_stopping()
            if stopping is None:
                log.warning("cannot see when Ray stops this replica: its sessions will not be drained with 1001")
                return
            if stopping:
                log.info("Ray is stopping this replica: draining %d sessions", len(self.server.sessions))
                await self.asgi.drain()
                return
            await asyncio.sleep(0.1)

    @app.get("/healthz")
    async def healthz(self):
        await self._started()
        return self.asgi.healthz()

    @app.get("/metrics")
    async def metrics(self, request: Request):
        await self._started()
        return self.asgi.metrics(request.headers)

    @app.get("/replica")
    async def replica(self) -> dict:
        """Which replica answered, and its open sessions (for tests and operators)."""
        context = serve.get_replica_context()
        return {"replica": context.replica_id.unique_id, "sessions": len(self.server.sessions)}

    @app.websocket("/{path:path}")
    async def session(self, websocket: WebSocket, path: str = "") -> None:
        await self._started()
        await self.asgi.websocket(websocket)

    @app.get("/{path:path}")
    async def other(self, request: Request, path: str = ""):
        return self.asgi.not_a_websocket(request.url.path, request.headers)

    def check_health(self) -> None:
        """Ray's health check: a replica whose engine worker died is restarted."""
        for served in self.server.served.values():
            thread = served.engine._thread
            if self.asgi._started and not self.server.draining and (thread is None or not thread.is_alive()):
                raise RuntimeError(f"the engine of {served.model.name} is not running")


# -- remote executor -----------------------------------------------------------------------


@dataclass
class _Call:
    batch: RunBatch
    deadline: float  # time.monotonic() on this replica; the caller sent the time left, not a clock
    caller: str  # the ingress replica whose engine sent it
    answer: asyncio.Future


class DeadlineExceeded(RuntimeError):
    """The batch's deadline passed before the executor could start it."""


class HeadwayExecutor:
    """Runs one model's executor (built from its :class:`~stream.hosts.ExecutorSpec`) for the
    engines of every ingress replica, merging their batches into one call.

    Why not ``@serve.batch``: each engine has one batch in flight and sends its next one a
    hop after the previous reply, so a batcher that knows nothing of its callers starts the
    other engine's lone batch first and the two alternate instead of merging (measured on 2
    cores: 0 of 45 calls merged with a 20 ms wait). This one holds a free executor, for at
    most ``hold_s``, until every engine seen in the last second has a batch queued (or the
    batch is full, or the earliest deadline leaves no more time), then runs them all as one."""

    def __init__(self, target: str, kwargs: dict[str, Any], max_batch_size: int = 64, hold_s: float = 0.02):
        self.executor = ExecutorSpec(target, kwargs).build()
        self.max_batch_size = max_batch_size
        self.hold_s = hold_s
        self._queue: list[_Call] = []
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._callers: dict[str, float] = {}  # caller -> when it last sent a batch
        self._compute_s = 0.0  # running estimate of one call
        self.batch_sizes: deque[int] = deque(maxlen=100_000)  # items per model call
        self.calls_per_batch: deque[int] = deque(maxlen=100_000)  # engines' batches merged per call
        self.compute_s: deque[float] = deque(maxlen=100_000)
        self.dropped_late = 0

    async def run(self, frame: bytes, budget_s: float, caller: str = "") -> bytes:
        """One engine batch (``stream.hosts`` encoding) -> its outputs, or a deadline reply."""
        message = _decode(frame)
        assert isinstance(message, RunBatch), "the remote executor runs stateless batches only"
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.create_task(self._serve())
        now = time.monotonic()
        self._callers[caller] = now
        call = _Call(message, now + budget_s, caller, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._wake.set()
        try:
            outputs = await call.answer
        except DeadlineExceeded as exc:
            return wire.packb({"type": "deadline_exceeded", "message": str(exc)})
        return wire.packb({"type": "ok", "value": outputs})

    def _ready_to_run(self, free_since: float, now: float) -> float | None:
        """0 to run now, else how long to hold at most."""
        items = sum(len(call.batch.items) for call in self._queue)
        active = {caller for caller, seen in self._callers.items() if now - seen < 1.0}
        queued = {call.caller for call in self._queue}
        slack = min(call.deadline for call in self._queue) - now - self._compute_s
        hold_left = free_since + self.hold_s - now
        if items >= self.max_batch_size or active <= queued or slack <= 0 or hold_left <= 0:
            return 0.0
        return min(hold_left, slack)

    async def _serve(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            free_since = time.monotonic()
            while (wait := self._ready_to_run(free_since, time.monotonic())) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
            taken, items = [], 0
            while self._queue and (not taken or items + len(self._queue[0].batch.items) <= self.max_batch_size):
                call = self._queue.pop(0)
                taken.append(call)
                items += len(call.batch.items)
            await self._run_merged(taken)

    async def _run_merged(self, calls: list[_Call]) -> None:
        now = time.monotonic()
        live = []
        for call in calls:
            if call.deadline <= now:
                self.dropped_late += 1
                call.answer.set_exception(DeadlineExceeded("the batch's deadline passed before the executor "
                                                           "could start it"))
            else:
                live.append(call)
        by_lane: dict[int, list[_Call]] = {}
        for call in live:
            by_lane.setdefault(call.batch.lane, []).append(call)
        for lane, members in by_lane.items():
            items: list[WorkItem] = [item for call in members for item in call.batch.items]
            start = time.perf_counter()
            try:
                outputs = await asyncio.to_thread(self.executor.run, RunBatch(lane, items, []))
            except Exception as exc:  # every engine answers its batch internal, as in-process
                for call in members:
                    call.answer.set_exception(exc)
                continue
            took = time.perf_counter() - start
            self._compute_s = took if not self.compute_s else 0.8 * self._compute_s + 0.2 * took
            self.compute_s.append(took)
            self.batch_sizes.append(len(items))
            self.calls_per_batch.append(len(members))
            offset = 0
            for call in members:
                n = len(call.batch.items)
                call.answer.set_result(list(outputs[offset:offset + n]))
                offset += n

    def stats(self) -> dict[str, Any]:
        """Items per model call, engine batches merged per call, call seconds, batches dropped late."""
        return {"batch_sizes": list(self.batch_sizes), "calls_per_batch": list(self.calls_per_batch),
                "compute_s": list(self.compute_s), "dropped_late": self.dropped_late}

    def reset_stats(self) -> None:
        self.batch_sizes.clear()
        self.calls_per_batch.clear()
        self.compute_s.clear()
        self.dropped_late = 0


HeadwayExecutor = serve.deployment(HeadwayExecutor)


class RayHost:
    """An :class:`~stream.hosts.ExecutorHost` whose executor is a :class:`HeadwayExecutor`
    deployment: the third host beside ``InProcessHost`` and ``ProcessHost``, over the same
    typed messages. ``call`` blocks the engine's worker thread (never the event loop) until
    the deployment answers; each batch carries the time left to its earliest deadline."""

    def __init__(self, handle: DeploymentHandle, model_name: str, *, caller: str = "", timeout_s: float = 30.0):
        self.handle = handle
        self.model_name = model_name
        self.caller = caller  # which engine this is, so the executor can wait for every engine's batch
        self.timeout_s = timeout_s

    def start(self) -> None:
        pass  # the deployment is up before any ingress replica takes a session

    def call(self, message: HostMessage) -> Any:
        if not isinstance(message, RunBatch):
            raise TypeError(f"the remote executor holds no state slots ({type(message).__name__} for "
                            f"{self.model_name}); serve stepped models in replica mode")
        now = time.monotonic_ns()
        budget_s = max(0.0, (min(item.deadline_ns for item in message.items) - now) / 1e9)
        reply = wire.unpackb(self.handle.run.remote(_encode(message), budget_s, self.caller).result(timeout_s=self.timeout_s))
        if reply["type"] == "deadline_exceeded":
            raise ProtocolError("deadline_exceeded", reply["message"])
        return reply["value"]

    def stop(self) -> None:
        pass


# -- building the application --------------------------------------------------------------


def replica_options(args: argparse.Namespace) -> dict[str, Any]:
    """``HeadwayReplica.options(...)`` for ``--replicas N`` or ``--autoscale MIN..MAX``.

    Sessions are the unit: ``max_ongoing_requests`` is the per-replica session capacity and
    autoscaling targets ``--target-sessions`` open sessions per replica."""
    options: dict[str, Any] = {
        "max_ongoing_requests": args.capacity + 8,  # + room for /healthz and /metrics
        "graceful_shutdown_timeout_s": args.drain_timeout_s + 5,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 2.0,
        "ray_actor_options": {"num_cpus": args.replica_cpus, **({"resources": {args.replica_resource: 1}}
                                                                 if args.replica_resource else {})},
    }
    if args.autoscale:
        low, high = args.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": low,
            "target_ongoing_requests": args.target_sessions,
            "metrics_interval_s": args.autoscale_interval_s, "look_back_period_s": args.autoscale_interval_s * 2,
            "upscale_delay_s": args.upscale_delay_s, "downscale_delay_s": args.downscale_delay_s,
        }
    else:
        options["num_replicas"] = args.replicas
    return options


def build_app(args: argparse.Namespace):
    """The Ray Serve application ``headway ray serve`` runs (replicas, and the executor
    deployment with ``--remote-executor``)."""
    from stream import serve as headway_serve

    executor = None
    if args.remote_executor:
        models = headway_serve.load_models(args)
        spec = models[0].executor_spec
        if models[0].slots:
            raise ValueError(f"{models[0].name} is a stepped model (state slots): serve it in replica mode")
        executor = HeadwayExecutor.options(
            num_replicas=args.executor_replicas, max_ongoing_requests=64,
            ray_actor_options={"num_cpus": args.replica_cpus}).bind(
            spec.target, spec.kwargs, models[0].max_batch_size, args.executor_hold_ms / 1000.0)
    return HeadwayReplica.options(**replica_options(args)).bind(args, executor)
