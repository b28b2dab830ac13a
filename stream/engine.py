"""The engine: one per loaded model (DESIGN rules 1-3). It wires four small parts together:

* :class:`stream.batcher.Batcher` -- the EDF queue, the lanes and the dispatch rule (no
  threads inside, tested with a fake clock);
* :class:`stream.slots.SlotTable` -- the state slots of a stepped model;
* :class:`stream.latency.LatencyEstimate` -- one call's latency by the cost the model names;
* an :class:`stream.hosts.ExecutorHost` -- where the batched model call runs (the worker
  thread itself by default, or another process), reached by typed messages.

Sessions live on the event loop and call :meth:`Engine.submit`, which stamps the request's
deadline (``arrival + budget``), pushes it into the batcher and returns an
``asyncio.Future``. One worker thread asks the batcher what to run, runs it through the host
and resolves the batch's futures back on the loop with one ``call_soon_threadsafe``. Model
code never runs on the event loop.

A request that can no longer finish by its deadline is answered ``deadline_exceeded``
instead of being run late -- at submit time when even an immediate batch of one would be
late, or at dispatch; one that allows degrading is run with ``WorkItem.degraded = True``
when the degraded estimate still makes it.

Admission (:meth:`open_session`): a one-shot session counts against ``capacity``; a
stepped session (``stepped=True``) holds one of the model's state slots from admission to
:meth:`close_session`. Either refusal is a ``ProtocolError("at_capacity")``, which the
session answers with close code 1013. Closing a session drops its queued work and frees
its slot (the executor gets ``CloseSlot`` before any later batch). Past ``max_queue``
queued requests, a new request is shed with ``queue_full``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from stream.batcher import Batcher, CostOf, Dispatch, Lane, PushResult, Request, batch_size_cost
from stream.errors import ProtocolError
from stream.hosts import CloseSlot, Executor, ExecutorHost, InProcessHost, OpenSlot, RunBatch, WorkItem
from stream.latency import LatencyEstimate
from stream.slots import SlotTable

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineSession", "Lane", "Result", "WorkItem"]


@dataclass
class Result:
    """A model output plus where the time went."""

    output: Any
    queue_ns: int  # arrival -> batch start
    compute_ns: int  # the batched call
    batch_size: int
    degraded: bool


@dataclass(eq=False)
class EngineSession:
    """A session's admission ticket; ``slot`` is its state slot when it is stepped."""

    id: int
    slot: int | None = None
    closed: bool = False


class EngineMetricsSink(Protocol):
    """What the engine reports (``stream.metrics.EngineMetrics`` implements it)."""

    def observe_batch(self, size: int, compute_s: float, queue_s: Sequence[float]) -> None: ...

    def count_deadline_miss(self, where: str) -> None: ...

    def count_shed(self, reason: str) -> None: ...


_Outcome = tuple[asyncio.Future, Any]  # (future, Result | ProtocolError)


class Engine:
    """Deadline-ordered batching in front of one executor (see the module docstring).

    ``executor`` is an executor (run in the worker thread) or an :class:`ExecutorHost`.
    For a host, ``max_batch_size`` and ``slots`` must be given; for an executor they default
    to its own attributes.

    Threading: ``submit``, ``open_session`` and ``close_session`` are called on the event
    loop; the worker thread drives the batcher and the host. One lock guards both queues.
    """

    def __init__(
        self,
        name: str,
        executor: Executor | ExecutorHost,
        *,
        max_batch_size: int | None = None,
        slots: int | None = None,
        capacity: int = 256,
        max_queue: int | None = None,
        batch_window_s: float = 0.0,
        margin_s: float = 0.001,
        latency_prior_s: float = 0.0,
        cost_of: CostOf = batch_size_cost,
        metrics: EngineMetricsSink | None = None,
    ):
        if hasattr(executor, "call"):
            self.host: ExecutorHost = executor  # type: ignore[assignment]
            if max_batch_size is None:
                raise ValueError("give max_batch_size with an executor host")
        else:
            self.host = InProcessHost(executor)  # type: ignore[arg-type]
            max_batch_size = max_batch_size or executor.max_batch_size  # type: ignore[union-attr]
            slots = getattr(executor, "slots", 0) if slots is None else slots
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.name = name
        self.max_batch_size = max_batch_size
        self.capacity = capacity
        self.slots = SlotTable(slots or 0)
        self.batch_window_ns = int(batch_window_s * 1e9)
        self.latency = LatencyEstimate(int(latency_prior_s * 1e9))
        self.batcher = Batcher(max_batch_size, self.latency, cost_of=cost_of, margin_ns=int(margin_s * 1e9),
                               max_queue=max_queue if max_queue is not None
                               else max(capacity, max_batch_size, 4 * (slots or 0)))
        self.metrics = metrics
        self._cond = threading.Condition(threading.Lock())
        self._controls: list[OpenSlot | CloseSlot] = []
        self._session_ids = itertools.count(1)
        self._sessions: set[EngineSession] = set()
        self._stopping = False
        self._failed: str | None = None  # the host could not start: every request is answered internal
        self._host_started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker (it starts the host); futures are resolved on ``loop``."""
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    async def ready(self) -> None:
        """Return once the host has started (the model is loaded and warm), or failed to."""
        await asyncio.get_running_loop().run_in_executor(None, self._host_started.wait)

    async def stop(self) -> None:
        """Finish the running batch, answer queued requests ``shutting_down``, stop the host."""
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
        return self.batcher.depth

    # -- loop side -----------------------------------------------------------------------

    def open_session(self, *, stepped: bool = False) -> EngineSession:
        """Admit a session (a stepped one with a state slot), or raise ``at_capacity``."""
        if self._stopping:
            raise ProtocolError("shutting_down", "server is shutting down")
        session = EngineSession(next(self._session_ids))
        if stepped:
            with self._cond:
                slot = self.slots.acquire(session)
                if slot is not None:
                    self._controls.append(OpenSlot(slot))
                    self._cond.notify()
            if slot is None:
                raise ProtocolError("at_capacity", f"model {self.name!r} has no free slot: all {self.slots.size} "
                                                   "are held by open streams; retry later or use another replica")
            session.slot = slot
        elif len(self._sessions) >= self.capacity:
            raise ProtocolError("at_capacity", f"model {self.name!r} is serving its capacity of {self.capacity} "
                                               "sessions; retry later or use another replica")
        self._sessions.add(session)
        return session

    def cancel_queued(self, session: EngineSession) -> int:
        """Drop the session's queued requests (their futures are cancelled); a batch already
        running is not stopped. Returns how many were dropped."""
        with self._cond:
            dropped = self.batcher.drop(session)
        for request in dropped:
            request.handle.cancel()
        return len(dropped)

    def promote_queued(self, session: EngineSession, lane: Lane) -> int:
        """Move the session's queued requests of lower lanes up to ``lane``; returns how many."""
        with self._cond:
            moved = self.batcher.promote(session, lane)
            if moved:
                self._cond.notify()
        return moved

    def close_session(self, session: EngineSession) -> None:
        """Forget the session, drop its queued work (futures cancelled), free its slot."""
        if session.closed:
            return
        session.closed = True
        self._sessions.discard(session)
        dropped = self.cancel_queued(session)
        if session.slot is not None:
            with self._cond:
                self.slots.release(session.slot)
                self._controls.append(CloseSlot(session.slot))
                self._cond.notify()
        if self.metrics:
            for _ in range(dropped):
                self.metrics.count_shed("disconnected")

    def submit(
        self,
        session: EngineSession,
        inputs: Any,
        *,
        budget_s: float,
        allow_degrade: bool = False,
        replace: bool = True,
        lane: Lane = Lane.ONESHOT,
        arrival_ns: int | None = None,
        target_s: float | None = None,
    ) -> asyncio.Future:
        """Queue one request; the future resolves to a :class:`Result` or raises ``ProtocolError``.

        ``arrival_ns`` (``time.monotonic_ns``) defaults to now; sessions pass the time the
        frame was received so that decoding is charged to the budget. A stepped session's
        requests are steps of its stream (never replaced; one per batch, in order);
        ``replace`` applies to one-shot requests.

        ``target_s`` is a soft latency target below the budget: the batcher may hold the
        request to grow a batch until its batch would have to start to answer within the
        target (default: the engine's ``batch_window_s``). The budget stays the hard
        deadline.
        """
        loop = self._loop
        assert loop is not None, "engine not started"
        future = loop.create_future()
        now = time.monotonic_ns()
        arrival = now if arrival_ns is None else arrival_ns
        deadline = arrival + int(budget_s * 1e9)
        if self._stopping or session.closed:
            future.set_exception(ProtocolError("shutting_down", "server is shutting down"))
            return future
        if target_s is None:
            hold_until, reply_by = min(arrival + self.batch_window_ns, deadline), None
        else:  # held until the batch that forms must start to answer within the target
            hold_until, reply_by = deadline, min(arrival + int(target_s * 1e9), deadline)
        request = Request(session, inputs, arrival, deadline, lane=lane, stream=session.slot,
                          allow_degrade=allow_degrade, replaceable=replace and session.slot is None,
                          hold_until_ns=hold_until, reply_by_ns=reply_by, handle=future)
        with self._cond:
            outcome, superseded = self.batcher.push(request, now)
            if outcome is PushResult.QUEUED:
                self._cond.notify()
        if superseded is not None:
            superseded.handle.set_exception(ProtocolError("superseded", "a newer observation replaced this one"))
            if self.metrics:
                self.metrics.count_shed("superseded")
        if outcome is PushResult.LATE:
            self._miss(future, "submit")
        elif outcome is PushResult.QUEUE_FULL:
            future.set_exception(ProtocolError("queue_full", f"model {self.name!r} has {self.batcher.max_queue} "
                                                             "requests queued; request shed"))
            if self.metrics:
                self.metrics.count_shed("queue_full")
        return future

    def _miss(self, future: asyncio.Future, where: str) -> None:
        if not future.done():
            future.set_exception(ProtocolError("deadline_exceeded", "the request cannot be answered within its budget"))
        if self.metrics:
            self.metrics.count_deadline_miss(where)

    # -- worker side ---------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.host.start()
        except Exception as exc:
            log.exception("engine %s: the executor host failed to start", self.name)
            self._failed = f"the model failed to start ({exc})"
        self._host_started.set()
        try:
            while True:
                controls, dispatch = self._next()
                if controls is None:
                    return
                for control in controls:
                    self._control(control)
                if dispatch is not None:
                    try:
                        self._execute(dispatch)
                    except Exception:  # a bug here must not kill the worker and strand every session
                        log.exception("engine %s failed outside the model call", self.name)
                        self._deliver([(r.handle, ProtocolError("internal", "engine error")) for r in dispatch.batch])
        finally:
            self.host.stop()

    def _next(self) -> tuple[list | None, Dispatch | None]:
        """Wait for work: (slot controls to run first, a batch or None); (None, None) to stop."""
        with self._cond:
            while True:
                if self._controls:
                    controls, self._controls = self._controls, []
                    return controls, None
                if self._stopping:
                    stranded = self.batcher.take_all()
                    break
                step = self.batcher.next(time.monotonic_ns())
                if isinstance(step, Dispatch):
                    break
                if step.ns is None:
                    self._cond.wait()
                else:
                    self._cond.wait(max(0, step.ns - time.monotonic_ns()) / 1e9)
        if self._stopping:
            self._deliver([(r.handle, ProtocolError("shutting_down", "server is shutting down")) for r in stranded])
            return None, None
        if step.expired:
            self._deliver([(r.handle, None) for r in step.expired])
        return [], step if step.batch else None

    def _control(self, message: OpenSlot | CloseSlot) -> None:
        if self._failed:
            return
        try:
            self.host.call(message)
        except Exception:
            log.exception("engine %s: %s failed", self.name, type(message).__name__)

    def _execute(self, dispatch: Dispatch) -> None:
        batch = dispatch.batch
        items = [WorkItem(r.inputs, r.degraded, r.stream, r.arrival_ns, r.deadline_ns) for r in batch]
        slots = {r.stream for r in batch if r.stream is not None}
        message = RunBatch(int(dispatch.lane), items, self.slots.active_mask(slots) if self.slots.size else [])
        cost = self.batcher.cost_of(batch)
        start = time.monotonic_ns()
        error: ProtocolError | None = None
        outputs: Sequence[Any] = ()
        if self._failed:
            error = ProtocolError("internal", self._failed)
        else:
            try:
                outputs = self.host.call(message)
            except ProtocolError as exc:  # a remote host's answer for the whole batch (deadline_exceeded)
                error = exc
            except Exception:
                log.exception("model %s failed on a batch of %d", self.name, len(items))
                error = ProtocolError("internal", "the model failed on this batch")
        compute = time.monotonic_ns() - start
        if error is None:
            outcomes: list[_Outcome] = [
                (r.handle, Result(output, start - r.arrival_ns, compute, len(items), r.degraded))
                for r, output in zip(batch, outputs)]
        else:
            outcomes = [(r.handle, error) for r in batch]
        # Answer first: the loop's wake-up overlaps the bookkeeping below.
        self._deliver(outcomes)
        with self._cond:
            self.batcher.finished()
        if error is None:
            self.latency.observe(cost, compute)
        if self.metrics:
            self.metrics.observe_batch(len(items), compute / 1e9, [(start - r.arrival_ns) / 1e9 for r in batch])

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        """Resolve futures on the loop: (future, Result | ProtocolError | None for a deadline miss)."""
        self._loop.call_soon_threadsafe(self._resolve, outcomes)

    def _resolve(self, outcomes: list[_Outcome]) -> None:
        for future, value in outcomes:
            if future.done():  # cancelled: its session went away
                continue
            if value is None:
                self._miss(future, "dispatch")
            elif isinstance(value, ProtocolError):
                future.set_exception(value)
            else:
                future.set_result(value)
