"""The batcher: which queued requests run together, and when. No threads, no clock.

Like websockets' sans-I/O ``Protocol``, the batcher only keeps state and answers
questions; the engine's worker thread drives it::

    batcher.push(request)          # from the event loop, under the engine's lock
    step = batcher.next(now_ns)    # from the worker, whenever it is idle
    # Dispatch(lane, batch, expired): run ``batch``, answer ``expired`` deadline_exceeded
    # WaitUntil(ns): nothing to run before ``ns`` (None: before the next push)
    batcher.finished()             # the dispatched batch has returned

Lanes, highest priority first (:class:`Lane`): ``STEP`` (LLM decode steps and real-time
stream steps such as DSM frames), ``ONESHOT`` (action chunks), ``PREFILL`` (prefill
slices, a bounded number of tokens each). A batch holds requests of one lane. When several
lanes are ready, the highest goes first, except that a ready lane passed over once goes
next: no lane waits for more than one batch of another (a decode step waits at most one
prefill slice; a prefill slice waits at most one batch of decode steps).

Within a lane requests are ordered by deadline (EDF). A stepped stream's steps run in the
order they were pushed and at most one per batch: only the oldest queued step of a stream
is eligible, the next one becomes eligible when it has been taken.

Dispatch rule for a lane (the worker is idle when it asks): take a batch when

* the lane holds a full batch (``max_batch_size`` eligible requests), or
* a queued request has been held as long as it may: until its ``hold_until_ns``, or, with a
  soft target (``reply_by_ns``), until the batch that would form must start to reply by
  then, or
* waiting longer would risk the earliest deadline:
  ``earliest_deadline - predicted_latency(batch) - margin <= now``.

Predictions come from a :class:`~stream.latency.LatencyEstimate` keyed by the cost that
``cost_of(batch)`` names. A request that cannot finish by its deadline is not run late: a
request that allows degrading is marked ``degraded`` when the degraded batch still makes
it, any other is returned in ``expired``.

Per owner (a session): at most one queued *replaceable* request; a newer one replaces it
(:meth:`push` returns the older, which the engine answers ``superseded``). ``drop(owner)``
removes an owner's queued work.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Hashable, Sequence

from stream.latency import CostKey, LatencyEstimate


class Lane(IntEnum):
    STEP = 0
    ONESHOT = 1
    PREFILL = 2


@dataclass(eq=False)
class Request:
    """One queued request. ``handle`` is the engine's (its future); the batcher never reads it."""

    owner: Hashable
    inputs: Any
    arrival_ns: int
    deadline_ns: int
    lane: Lane = Lane.ONESHOT
    stream: Hashable | None = None  # a stepped stream's slot: one step per batch, in order
    allow_degrade: bool = False
    replaceable: bool = True
    hold_until_ns: int = 0
    reply_by_ns: int | None = None
    handle: Any = None
    degraded: bool = False
    dead: bool = False
    seq: int = 0


@dataclass
class Dispatch:
    lane: Lane
    batch: list[Request]
    expired: list[Request]  # taken off the queue: they cannot make their deadlines
    predicted_ns: int  # the latency estimate of ``batch``


@dataclass
class WaitUntil:
    ns: int | None  # None: nothing queued; wait for a push


class PushResult(IntEnum):
    QUEUED = 0
    LATE = 1  # even a batch of one, started when the running batch ends, would be late
    QUEUE_FULL = 2


CostOf = Callable[[Sequence[Request]], CostKey]


def batch_size_cost(batch: Sequence[Request]) -> CostKey:
    """The default cost: the batch size, degraded batches apart from normal ones."""
    if len(batch) == 1:
        return CostKey("degraded" if batch[0].degraded else "normal", 1)
    degraded = sum(r.degraded for r in batch)
    kind = "normal" if not degraded else ("degraded" if degraded == len(batch) else "mixed")
    return CostKey(kind, len(batch))


class _LaneQueue:
    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Request]] = []  # (deadline, seq, request); eligible only
        self.live = 0  # eligible, not dead
        self.skipped = False  # ready at the last dispatch of another lane

    def push(self, request: Request) -> None:
        heapq.heappush(self.heap, (request.deadline_ns, request.seq, request))
        self.live += 1

    def prune(self) -> None:
        while self.heap and self.heap[0][2].dead:
            heapq.heappop(self.heap)

    def first(self, n: int) -> list[Request]:
        """The ``n`` eligible requests with the earliest deadlines."""
        self.prune()
        if n == 1 or len(self.heap) == 1:
            return [self.heap[0][2]] if self.heap else []
        if len(self.heap) <= n:
            return [entry[2] for entry in sorted(self.heap) if not entry[2].dead]
        return [entry[2] for entry in heapq.nsmallest(n + self._dead_count(), self.heap) if not entry[2].dead][:n]

    def _dead_count(self) -> int:
        return len(self.heap) - self.live


class Batcher:
    def __init__(self, max_batch_size: int, latency: LatencyEstimate, *, cost_of: CostOf = batch_size_cost,
                 margin_ns: int = 1_000_000, max_queue: int = 256):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.latency = latency
        self.cost_of = cost_of
        self.margin_ns = margin_ns
        self.max_queue = max_queue
        self.busy_until_ns = 0  # predicted end of the dispatched batch; 0 while idle
        self._lanes = {lane: _LaneQueue() for lane in Lane}
        self._waiting: dict[Hashable, deque[Request]] = {}  # stream -> steps behind its eligible one
        self._replaceable: dict[Hashable, Request] = {}  # owner -> its queued replaceable request
        self._seq = itertools.count()

    @property
    def depth(self) -> int:
        """Requests queued (eligible or waiting behind a step of their stream)."""
        return sum(q.live for q in self._lanes.values()) + sum(len(w) for w in self._waiting.values())

    def predict(self, batch: Sequence[Request]) -> int:
        return self.latency.predict(self.cost_of(batch))

    # -- the loop's side -----------------------------------------------------------------

    def push(self, request: Request, now_ns: int) -> tuple[PushResult, Request | None]:
        """Queue ``request``; returns (result, the replaceable request it superseded or None).

        A request that is ``LATE`` or shed (``QUEUE_FULL``) is not queued; a superseded one is
        taken off the queue either way (the newer observation makes it moot).
        """
        superseded = None
        if request.replaceable and request.stream is None:
            superseded = self._replaceable.pop(request.owner, None)
            if superseded is not None:
                self._kill(superseded)
        start = max(now_ns, self.busy_until_ns)
        probe = [request]
        if start + self.predict(probe) > request.deadline_ns:
            late = True
            if request.allow_degrade:
                request.degraded = True
                late = start + self.predict(probe) > request.deadline_ns
                request.degraded = False
            if late:
                return PushResult.LATE, superseded
        if self.depth >= self.max_queue:
            return PushResult.QUEUE_FULL, superseded
        request.seq = next(self._seq)
        if request.stream is not None:
            behind = self._waiting.get(request.stream)
            if behind is not None:  # an earlier step of the stream is queued: wait behind it
                behind.append(request)
                return PushResult.QUEUED, superseded
            self._waiting[request.stream] = deque()
        elif request.replaceable:
            self._replaceable[request.owner] = request
        self._lanes[request.lane].push(request)
        return PushResult.QUEUED, superseded

    def drop(self, owner: Hashable) -> list[Request]:
        """Take every queued request of ``owner`` off the queue; returns them."""
        dropped: list[Request] = []
        for stream, behind in list(self._waiting.items()):
            if behind and behind[0].owner == owner:  # a stream has one owner: drop its waiting steps
                for request in behind:
                    request.dead = True
                dropped.extend(behind)
                behind.clear()
        queued = [r for q in self._lanes.values() for _, _, r in q.heap if r.owner == owner and not r.dead]
        for request in queued:
            self._kill(request)
        dropped.extend(queued)
        self._replaceable.pop(owner, None)
        return dropped

    def promote(self, owner: Hashable, lane: Lane) -> int:
        """Move ``owner``'s queued requests of lower lanes up to ``lane`` (a session whose user
        now waits for work it queued as background); their order within the stream is kept.
        Returns how many moved."""
        moved = 0
        for behind in self._waiting.values():
            for request in behind:
                if request.owner == owner and request.lane > lane:
                    request.lane = lane  # pushed into ``lane`` when it becomes eligible
                    moved += 1
        for queue_lane, queue in self._lanes.items():
            if queue_lane <= lane:
                continue
            mine = [entry for entry in queue.heap if entry[2].owner == owner and not entry[2].dead]
            if not mine:
                continue
            queue.heap = [entry for entry in queue.heap if entry[2].owner != owner or entry[2].dead]
            heapq.heapify(queue.heap)
            queue.live -= len(mine)
            for _, _, request in mine:
                request.lane = lane
                self._lanes[lane].push(request)
            moved += len(mine)
        return moved

    def take_all(self) -> list[Request]:
        """Empty the queue (shutting down); returns what was queued."""
        everything = [r for q in self._lanes.values() for _, _, r in q.heap if not r.dead]
        everything += [r for w in self._waiting.values() for r in w]
        for queue in self._lanes.values():
            queue.heap.clear()
            queue.live = 0
        self._waiting.clear()
        self._replaceable.clear()
        return everything

    def _kill(self, request: Request) -> None:
        """Take a queued request off the queue (lazily: its heap entry is skipped later)."""
        request.dead = True
        if request.stream is not None:
            behind = self._waiting.get(request.stream)
            if behind is not None and request in behind:
                behind.remove(request)
                return
        self._lanes[request.lane].live -= 1
        self._taken(request)

    def _taken(self, request: Request) -> None:
        """``request`` left its lane: let the next step of its stream become eligible."""
        if request.stream is not None:
            behind = self._waiting.get(request.stream)
            if behind:
                nxt = behind.popleft()
                self._lanes[nxt.lane].push(nxt)
            else:
                self._waiting.pop(request.stream, None)
        elif self._replaceable.get(request.owner) is request:
            del self._replaceable[request.owner]

    # -- the worker's side ---------------------------------------------------------------

    def next(self, now_ns: int) -> Dispatch | WaitUntil:
        """What the idle worker should do at ``now_ns`` (see the module docstring)."""
        ready: list[Lane] = []
        wake: int | None = None
        for lane, queue in self._lanes.items():
            if not queue.live:
                queue.skipped = False
                continue
            at = self._ready_at(queue)
            if at <= now_ns:
                ready.append(lane)
            elif wake is None or at < wake:
                wake = at
        if not ready:
            return WaitUntil(wake)
        skipped = [lane for lane in ready if self._lanes[lane].skipped]
        chosen = skipped[0] if skipped else ready[0]
        for lane in ready:
            self._lanes[lane].skipped = lane != chosen
        return self._dispatch(chosen, now_ns)

    def finished(self) -> None:
        self.busy_until_ns = 0

    def _ready_at(self, queue: _LaneQueue) -> int:
        """The earliest time at which the lane's dispatch rule fires."""
        candidates = queue.first(self.max_batch_size)
        if len(candidates) >= self.max_batch_size:
            return 0
        predicted = self.predict(candidates)
        window_end = min(r.hold_until_ns for r in candidates)
        targets = [r.reply_by_ns for r in candidates if r.reply_by_ns is not None]
        if targets:  # held only while the batch that forms still replies in time
            window_end = min(window_end, min(targets) - predicted - self.margin_ns)
        deadline_risk = candidates[0].deadline_ns - predicted - self.margin_ns
        return min(window_end, deadline_risk)

    def _dispatch(self, lane: Lane, now_ns: int) -> Dispatch:
        queue = self._lanes[lane]
        batch: list[Request] = []
        expired: list[Request] = []
        while queue.heap and len(batch) < self.max_batch_size:
            request = heapq.heappop(queue.heap)[2]
            if request.dead:
                continue
            queue.live -= 1
            batch.append(request)
        for request in batch:  # after the batch is formed: a stream's next step waits for the next batch
            self._taken(request)
        # Who makes the deadline in this batch: degrade those that may, drop the rest.
        predicted = self.predict(batch)
        late = [r for r in batch if now_ns + predicted > r.deadline_ns]
        if late:
            for request in late:
                if request.allow_degrade:
                    request.degraded = True
            predicted = self.predict(batch)
            for request in late:
                if now_ns + predicted > request.deadline_ns:
                    request.degraded = False
                    expired.append(request)
            if expired:
                batch = [r for r in batch if r not in expired]
                predicted = self.predict(batch) if batch else 0
        self.busy_until_ns = now_ns + predicted if batch else 0
        return Dispatch(lane, batch, expired, predicted)
