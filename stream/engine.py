"""The engine: one per loaded model. A bounded earliest-deadline-first queue, a batcher and
one worker thread that owns the model (DESIGN rules 1-3).

Sessions live on the event loop and call :meth:`Engine.submit`, which stamps the request's
deadline, puts it in the queue and returns an ``asyncio.Future``. The worker thread takes
batches off the queue and hands them to the :class:`Executor` -- the batched model call --
then resolves the futures back on the loop with one ``call_soon_threadsafe`` per batch.
Model code therefore never runs on the event loop.

Dispatch rule (the worker is idle whenever it looks at the queue): take a batch when

* the queue holds a full batch (``executor.max_batch_size`` requests), or
* a queued request has been held as long as it may: ``batch_window_s`` after its arrival
  (0 by default: an idle worker starts at once, so a single client sees no batching
  delay), or as long as its soft latency target ``target_s`` allows, or
* waiting longer would risk the earliest deadline:
  ``earliest_deadline - predicted_latency(b) - margin <= now``.

While the worker computes, new requests accumulate; that is where batches come from.

Deadlines: ``deadline = arrival + budget``. A request that can no longer finish by its
deadline (``now + predicted_latency > deadline``) is answered ``deadline_exceeded``
instead of being run late -- at submit time when even an immediate batch of one would be
late, or at dispatch. A request that allows degrading is instead run with
``WorkItem.degraded = True`` when the degraded estimate still makes it (the executor
decides what degrading means, e.g. fewer denoising steps).

Per-session rules: a session holds at most one queued *replaceable* request; a newer one
replaces it (the older is answered ``superseded``). Closing a session drops its queued
work. Admission: past ``capacity`` sessions, :meth:`open_session` raises :class:`AtCapacity`
(the server closes the connection with 1013). Past ``max_queue`` queued requests, a new
request is shed with ``queue_full``.

Stepped streams (DESIGN rule 3) fit the same engine: a request may name a ``stream``; the
executor keeps per-stream state slots (e.g. a KV cache) and gets, in every batch, the items
of the streams that have a step due -- it builds its own mask for the idle slots.
:meth:`Engine.control` runs ``open_stream``/``close_stream`` (or any function) on the
worker thread between batches, so slot tables are touched by one thread only. Steps are
submitted with ``replace=False``: every step counts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, Sequence

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The executor interface


@dataclass
class WorkItem:
    """One request as the executor sees it."""

    inputs: Any  # validated observation (dict of numpy arrays) or step input
    degraded: bool = False  # run cheaper (fewer denoising steps) to make the deadline
    stream: Hashable | None = None  # stepped streams: whose state slot this step advances
    arrival_ns: int = 0
    deadline_ns: int = 0


class Executor(Protocol):
    """The batched model call. Called only from the engine's worker thread, one call at a time.

    ``run`` gets 1..``max_batch_size`` items and returns one output per item, in order.
    If it raises, every item of that batch is answered ``internal``; the engine keeps
    serving. A remote executor (another process, a Ray Serve handle) implements the same
    method and blocks the worker thread while the remote call runs.
    """

    max_batch_size: int

    def run(self, items: Sequence[WorkItem]) -> Sequence[Any]: ...


class EngineError(Exception):
    """A request answered without a model output; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class AtCapacity(EngineError):
    def __init__(self, message: str):
        super().__init__("at_capacity", message)


@dataclass
class Result:
    """A model output plus where the time went."""

    output: Any
    queue_ns: int  # arrival -> batch start
    compute_ns: int  # the batched call
    batch_size: int
    degraded: bool


# ---------------------------------------------------------------------------------------
# Latency estimate


class LatencyEstimate:
    """Running estimate of one batched call's latency per batch size.

    Per (batch size, degraded) it keeps an exponentially weighted mean and mean absolute
    deviation; ``predict`` returns mean + 2 deviations. An unseen size borrows the
    estimate of the nearest larger seen size (latency grows with the batch), else the
    nearest smaller one (optimistic; corrected after one call), else the prior. An unseen
    degraded estimate is the normal one times ``degraded_ratio``. Reads are unlocked:
    single dict lookups are atomic under the GIL and a stale value only shifts a guess.
    """

    def __init__(self, prior_ns: int = 0, alpha: float = 0.2, degraded_ratio: float = 0.5):
        self.prior_ns = prior_ns
        self.alpha = alpha
        self.degraded_ratio = degraded_ratio
        self._mean: dict[tuple[int, bool], float] = {}
        self._dev: dict[tuple[int, bool], float] = {}

    def observe(self, batch_size: int, degraded: bool, ns: int) -> None:
        if degraded:
            # A request runs degraded only while the normal estimate says it would be late,
            # so the normal estimate would never be observed again: a single slow call
            # (a GC pause, a cold cache) would keep a session degraded for good. A degraded
            # call that shows the normal estimate too pessimistic pulls it down.
            implied = ns / self.degraded_ratio
            normal = (batch_size, False)
            if normal in self._mean and self._mean[normal] + 2.0 * self._dev[normal] > implied:
                self.observe(batch_size, False, int(implied))
        key = (batch_size, degraded)
        mean = self._mean.get(key)
        if mean is None:
            self._mean[key], self._dev[key] = float(ns), 0.0
            return
        error = ns - mean
        self._mean[key] = mean + self.alpha * error
        self._dev[key] = self._dev[key] + self.alpha * (abs(error) - self._dev[key])

    def _lookup(self, batch_size: int, degraded: bool) -> float | None:
        key = (batch_size, degraded)
        if key in self._mean:
            return self._mean[key] + 2.0 * self._dev[key]
        sizes = [b for (b, d) in list(self._mean) if d == degraded]
        if not sizes:
            return None
        larger = [b for b in sizes if b > batch_size]
        b = min(larger) if larger else max(sizes)
        return self._mean[(b, degraded)] + 2.0 * self._dev[(b, degraded)]

    def predict(self, batch_size: int, degraded: bool = False) -> int:
        if degraded:
            value = self._lookup(batch_size, True)
            if value is None:
                return int(self.predict(batch_size) * self.degraded_ratio)
            return int(value)
        value = self._lookup(batch_size, False)
        return self.prior_ns if value is None else int(value)


# ---------------------------------------------------------------------------------------
# Engine


@dataclass(eq=False)
class _Request:
    session: "EngineSession"
    inputs: Any
    arrival_ns: int
    deadline_ns: int
    allow_degrade: bool
    replaceable: bool
    stream: Hashable | None
    future: asyncio.Future
    hold_until_ns: int = 0  # the batcher may keep it queued for companions until then...
    reply_by_ns: int | None = None  # ...or, with a soft target, until its batch must start to reply by then
    dead: bool = False  # superseded, dropped with its session, or shed
    degraded: bool = False  # set at dispatch when only the degraded estimate makes the deadline


@dataclass(eq=False)
class EngineSession:
    """A session's handle on an engine (admission ticket)."""

    id: int
    queued: _Request | None = None  # its replaceable request while queued
    closed: bool = False


class EngineMetricsSink(Protocol):
    """What the engine reports (``stream.metrics.EngineMetrics`` implements it)."""

    def observe_batch(self, size: int, compute_s: float, queue_s: Sequence[float]) -> None: ...

    def count_deadline_miss(self, where: str) -> None: ...

    def count_shed(self, reason: str) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...


class Engine:
    """Deadline-ordered batching in front of one :class:`Executor` (see module docstring).

    Threading: ``submit``, ``open_session``, ``close_session`` and ``control`` are called on
    the event loop; the worker thread runs the executor. One lock guards the queue.
    """

    def __init__(
        self,
        name: str,
        executor: Executor,
        *,
        capacity: int = 256,
        max_queue: int | None = None,
        batch_window_s: float = 0.0,
        margin_s: float = 0.001,
        latency_prior_s: float = 0.0,
        degraded_ratio: float = 0.5,
        metrics: EngineMetricsSink | None = None,
    ):
        if executor.max_batch_size < 1:
            raise ValueError("executor.max_batch_size must be >= 1")
        self.name = name
        self.executor = executor
        self.capacity = capacity
        self.max_queue = max_queue if max_queue is not None else max(capacity, executor.max_batch_size)
        self.batch_window_ns = int(batch_window_s * 1e9)
        self.margin_ns = int(margin_s * 1e9)
        self.latency = LatencyEstimate(int(latency_prior_s * 1e9), degraded_ratio=degraded_ratio)
        self.metrics = metrics
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, _Request]] = []
        self._live = 0  # requests in the heap that are not dead
        self._hold_until_ns = 0  # earliest hold_until_ns of the queued requests
        self._reply_by_ns: int | None = None  # earliest reply_by_ns of the queued requests
        self._controls: list[tuple[Callable[[Executor], Any], asyncio.Future]] = []
        self._seq = itertools.count()
        self._session_ids = itertools.count(1)
        self._sessions: set[EngineSession] = set()
        self._busy_until_ns = 0  # predicted end of the running batch (0: idle)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker; futures are resolved on ``loop`` (default: the running loop)."""
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish the running batch, answer queued requests ``shutting_down``, join the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    @property
    def queue_depth(self) -> int:
        return self._live

    # -- loop side -----------------------------------------------------------------------

    def open_session(self) -> EngineSession:
        """Admit a session, or raise :class:`AtCapacity`."""
        if self._stopping:
            raise EngineError("shutting_down", "server is shutting down")
        if len(self._sessions) >= self.capacity:
            raise AtCapacity(f"model {self.name!r} is serving its capacity of {self.capacity} sessions; "
                             "retry later or use another replica")
        session = EngineSession(next(self._session_ids))
        self._sessions.add(session)
        return session

    def close_session(self, session: EngineSession) -> None:
        """Forget the session and drop its queued work (its futures are cancelled)."""
        session.closed = True
        self._sessions.discard(session)
        with self._cond:
            dropped = [entry[2] for entry in self._heap if entry[2].session is session and not entry[2].dead]
            for request in dropped:
                request.dead = True
                self._live -= 1
            session.queued = None
        for request in dropped:
            request.future.cancel()
            if self.metrics:
                self.metrics.count_shed("disconnected")

    def submit(
        self,
        session: EngineSession,
        inputs: Any,
        *,
        budget_s: float,
        allow_degrade: bool = False,
        replace: bool = True,
        stream: Hashable | None = None,
        arrival_ns: int | None = None,
        target_s: float | None = None,
    ) -> asyncio.Future:
        """Queue one request; the future resolves to a :class:`Result` or raises :class:`EngineError`.

        ``arrival_ns`` (``time.monotonic_ns``) defaults to now; sessions pass the time the
        frame was received so that decoding is charged to the budget.

        ``target_s`` is a soft latency target below the budget: the batcher may hold the
        request to grow a batch until its batch would have to start to answer within the
        target (default: the engine's ``batch_window_s``). The budget stays the hard
        deadline. A robot session uses it to batch across robots only as long as the
        reply still arrives within the delay it assumed.
        """
        loop = self._loop
        assert loop is not None, "engine not started"
        future = loop.create_future()
        now = time.monotonic_ns()
        arrival = now if arrival_ns is None else arrival_ns
        deadline = arrival + int(budget_s * 1e9)
        if target_s is None:
            hold_until, reply_by = min(arrival + self.batch_window_ns, deadline), None
        else:  # held until the batch that forms must start to answer within the target
            hold_until, reply_by = deadline, min(arrival + int(target_s * 1e9), deadline)
        request = _Request(session, inputs, arrival, deadline, allow_degrade, replace, stream, future,
                           hold_until_ns=hold_until, reply_by_ns=reply_by)
        if self._stopping or session.closed:
            future.set_exception(EngineError("shutting_down", "server is shutting down"))
            return future
        # Admission at enqueue: even a batch of one started when the running batch ends is late.
        start = max(now, self._busy_until_ns)
        if start + self.latency.predict(1, allow_degrade) > deadline:
            self._miss(future, "submit")
            return future
        superseded = None
        with self._cond:
            if replace and session.queued is not None:
                superseded = session.queued
                superseded.dead = True
                self._live -= 1
                session.queued = None
            if self._live >= self.max_queue:
                shed = True
            else:
                shed = False
                if self._live == 0 or request.hold_until_ns < self._hold_until_ns:
                    self._hold_until_ns = request.hold_until_ns
                if reply_by is not None and (self._live == 0 or self._reply_by_ns is None
                                             or reply_by < self._reply_by_ns):
                    self._reply_by_ns = reply_by
                elif self._live == 0:
                    self._reply_by_ns = None
                heapq.heappush(self._heap, (deadline, next(self._seq), request))
                self._live += 1
                if replace:
                    session.queued = request
                self._cond.notify()
            depth = self._live
        if superseded is not None:
            superseded.future.set_exception(EngineError("superseded", "a newer observation replaced this one"))
            if self.metrics:
                self.metrics.count_shed("superseded")
        if shed:
            future.set_exception(EngineError("queue_full", f"model {self.name!r} has {self.max_queue} "
                                                           "requests queued; request shed"))
            if self.metrics:
                self.metrics.count_shed("queue_full")
        if self.metrics:
            self.metrics.set_queue_depth(depth)
        return future

    async def control(self, function: Callable[[Executor], Any]) -> Any:
        """Run ``function(executor)`` on the worker thread between batches; return its result.

        This is how stepped streams open and close their state slots.
        """
        assert self._loop is not None, "engine not started"
        future = self._loop.create_future()
        with self._cond:
            self._controls.append((function, future))
            self._cond.notify()
        return await future

    def _miss(self, future: asyncio.Future, where: str) -> None:
        future.set_exception(EngineError("deadline_exceeded", "the request cannot be answered within its budget"))
        if self.metrics:
            self.metrics.count_deadline_miss(where)

    # -- worker side ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            controls, batch, expired = self._next_batch()
            if controls is None:
                return
            for function, future in controls:
                try:
                    value, error = function(self.executor), None
                except Exception as exc:  # handed back to the awaiting caller
                    value, error = None, exc
                self._loop.call_soon_threadsafe(_settle, future, value, error)
            if expired:
                self._deliver([(r.future, None, "dispatch") for r in expired])
            if batch:
                try:
                    self._execute(batch)
                except Exception:  # a bug here must not kill the worker and strand every session
                    log.exception("engine %s failed outside the model call", self.name)
                    self._deliver([(r.future, EngineError("internal", "engine error"), None) for r in batch])

    def _next_batch(self) -> tuple[list | None, list[_Request], list[_Request]]:
        """Wait for the dispatch rule; return (controls, batch, requests already past hope)."""
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].dead:
                    heapq.heappop(self._heap)
                if self._controls:
                    controls, self._controls = self._controls, []
                    return controls, [], []
                if not self._live:
                    if self._stopping:
                        return None, [], []
                    self._cond.wait()
                    continue
                if self._stopping:
                    break
                now = time.monotonic_ns()
                size = min(self._live, self.executor.max_batch_size)
                if size >= self.executor.max_batch_size:
                    break
                window_end = self._hold_until_ns
                if self._reply_by_ns is not None:  # the batch of this size must still make it
                    window_end = min(window_end, self._reply_by_ns - self.latency.predict(size) - self.margin_ns)
                if now >= window_end:
                    break
                latest_start = self._heap[0][0] - self.latency.predict(size) - self.margin_ns
                if latest_start <= now:
                    break
                self._cond.wait((min(window_end, latest_start) - now) / 1e9)
            now = time.monotonic_ns()
            single = self.latency.predict(1)
            batch: list[_Request] = []
            expired: list[_Request] = []
            stopping = self._stopping
            while self._heap and (stopping or len(batch) < self.executor.max_batch_size):
                request = heapq.heappop(self._heap)[2]
                if request.dead:
                    continue
                self._live -= 1
                if request.session.queued is request:
                    request.session.queued = None
                if stopping:
                    expired.append(request)
                elif now + single > request.deadline_ns and not request.allow_degrade:
                    expired.append(request)  # late even alone; takes no batch slot
                else:
                    batch.append(request)
            if self._live:
                live = [e[2] for e in self._heap if not e[2].dead]
                self._hold_until_ns = min(r.hold_until_ns for r in live)
                targets = [r.reply_by_ns for r in live if r.reply_by_ns is not None]
                self._reply_by_ns = min(targets) if targets else None
            if batch:
                self._busy_until_ns = now + self.latency.predict(len(batch))
            depth = self._live
        if self.metrics:
            self.metrics.set_queue_depth(depth)
        if stopping:
            self._deliver([(r.future, EngineError("shutting_down", "server is shutting down"), None)
                           for r in expired])
            return [], [], []
        return [], batch, expired

    def _execute(self, batch: list[_Request]) -> None:
        start = time.monotonic_ns()
        size = len(batch)
        predicted = self.latency.predict(size)
        run: list[_Request] = []
        outcomes: list[tuple[asyncio.Future, Any, str | None]] = []
        for request in batch:
            if start + predicted <= request.deadline_ns:
                run.append(request)
            elif request.allow_degrade and start + self.latency.predict(size, True) <= request.deadline_ns:
                request.degraded = True
                run.append(request)
            else:
                outcomes.append((request.future, None, "dispatch"))
        if outcomes:
            self._deliver(outcomes)
            outcomes = []
        if not run:
            self._busy_until_ns = 0
            return
        items = [WorkItem(r.inputs, r.degraded, r.stream, r.arrival_ns, r.deadline_ns)
                 for r in run]
        degraded = any(item.degraded for item in items)
        start = time.monotonic_ns()
        try:
            outputs = self.executor.run(items)
            if len(outputs) != len(items):
                raise RuntimeError(f"executor returned {len(outputs)} outputs for {len(items)} items")
            error = None
        except Exception as exc:
            log.exception("model %s failed on a batch of %d", self.name, len(items))
            outputs, error = [None] * len(items), exc
        end = time.monotonic_ns()
        self._busy_until_ns = 0
        compute = end - start
        if error is None:
            self.latency.observe(len(items), degraded, compute)
        for request, item, output in zip(run, items, outputs):
            if error is not None:
                outcomes.append((request.future, EngineError("internal", "the model failed on this batch"), None))
            else:
                outcomes.append((request.future, Result(output, start - request.arrival_ns, compute,
                                                        len(items), item.degraded), None))
        if self.metrics:
            self.metrics.observe_batch(len(items), compute / 1e9, [(start - r.arrival_ns) / 1e9 for r in run])
        self._deliver(outcomes)  # last, so the worker is back waiting (GIL free) when the loop wakes

    def _deliver(self, outcomes: list[tuple[asyncio.Future, Any, str | None]]) -> None:
        """Resolve futures on the loop: (future, Result | EngineError | None, miss-site | None)."""
        self._loop.call_soon_threadsafe(self._resolve, outcomes)

    def _resolve(self, outcomes: list[tuple[asyncio.Future, Any, str | None]]) -> None:
        for future, value, missed_at in outcomes:
            if future.done():  # cancelled: its session went away
                continue
            if missed_at is not None:
                self._miss(future, missed_at)
            elif isinstance(value, EngineError):
                future.set_exception(value)
            else:
                future.set_result(value)


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
