"""``RobotLoop``: a fixed-rate control loop that executes action chunks while the next is computed.

The loop never waits for the network. Each tick it (1) merges any chunk that arrived,
(2) observes the robot, (3) asks for the next chunk when ``s`` actions of the current one
have run, (4) executes the action planned for this tick, or holds when none is planned
(an *underrun*, counted; before the first chunk of a session or episode the robot is
not commanded at all). Requests and replies go through a ``PolicyLink``: anything with
non-blocking ``request``/``poll``/``abandon`` (``clients.policy_link.WebsocketPolicyLink``
talks to a Headway server's ``/v1/policy``).

A real robot plugs in through ``Robot``: ``observe()`` returns at least ``{"state": [S]}``
(images optional), ``apply(action)`` commands one action. ``on_underrun`` decides what to
do when the buffer runs dry (default: repeat the last action). A robot that runs episodes
may also have ``take_episode_boundary() -> bool``: when it returns True the loop drops its
plan and asks for a fresh chunk with ``reset`` set, so the server forgets the old one.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

import numpy as np

from clients.action_buffer import ActionBuffer

Clock = Callable[[], float]  # seconds, monotonic
Sleep = Callable[[float], None]


class Robot(Protocol):
    def observe(self) -> dict[str, np.ndarray]:
        """The robot's current observation; ``"state"`` at least."""
        ...

    def apply(self, action: np.ndarray) -> None:
        """Command one action for this control tick."""
        ...


@dataclass
class RequestFailed:
    """The server answered a request with an error (e.g. ``deadline_exceeded``)."""

    request_id: int
    code: str


@dataclass
class ChunkReply:
    request_id: int
    actions: np.ndarray  # [H, A]
    start_tick: int  # tick at which actions[0] applies
    d: int  # inference delay the server assumed, ticks
    s: int  # execution horizon: ask again after s actions of this chunk
    timing: dict[str, float] = field(default_factory=dict)
    received_at: float | None = None  # time.monotonic() when the reply came off the wire


class PolicyLink(Protocol):
    def request(self, request_id: int, tick: int, observation: dict[str, np.ndarray], report: dict[str, int] | None) -> None:
        """Send an observation captured at ``tick``; must not block. ``report`` tells the server
        when the previous chunk arrived and where its index 0 fell on the robot's timeline:
        ``{"request_id", "tick_sent", "tick_arrived", "plan_start", "rtt_ms"}``."""
        ...

    def poll(self) -> list[ChunkReply | RequestFailed]:
        """Replies (chunks or failures) that arrived since the last poll; must not block."""
        ...

    def abandon(self, request_id: int) -> None:
        """The loop gave up on ``request_id``: drop the session so its reply can never arrive."""
        ...


@dataclass
class LoopStats:
    ticks: int = 0
    requests: int = 0  # observations sent
    underruns: int = 0  # ticks with no planned action after the first chunk arrived
    warmup_ticks: int = 0  # ticks held before the first chunk of the session or an episode arrived
    timeouts: int = 0
    failures: int = 0  # requests the server answered with an error; asked again at once
    late_replies_dropped: int = 0  # replies to requests the loop had given up on
    stale_replies_dropped: int = 0  # replies to requests of an episode that had ended
    skipped_actions: int = 0  # new-plan actions lost because a chunk came later than its d
    chunks: int = 0
    s_above_d: int = 0  # chunks whose s exceeded max(d, 1): the server lengthened s for load
    jitter_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))
    seam_jerk: deque = field(default_factory=lambda: deque(maxlen=10_000))
    delay_ticks: deque = field(default_factory=lambda: deque(maxlen=10_000))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=10_000))  # server's batch per chunk
    seam_ticks: deque = field(default_factory=lambda: deque(maxlen=10_000))  # ticks where a new chunk took over
    execution_horizons: deque = field(default_factory=lambda: deque(maxlen=10_000))  # the server's s per chunk

    def since(self, mark: "LoopStats") -> "LoopStats":
        """What was counted after ``mark`` (a ``copy.deepcopy`` of these stats taken earlier,
        e.g. at the end of a warm-up): counters less the mark's, samples after the mark's.
        Exact while no sample window has dropped samples since the mark (their ``maxlen``)."""
        later = LoopStats()
        for f in fields(self):
            value, before = getattr(self, f.name), getattr(mark, f.name)
            if isinstance(value, deque):
                getattr(later, f.name).extend(list(value)[len(before):])
            else:
                setattr(later, f.name, value - before)
        return later

    def summary(self) -> dict[str, Any]:
        def pct(values, q):
            return float(np.percentile(np.asarray(values), q)) if len(values) else None

        return {
            "ticks": self.ticks,
            "requests": self.requests,
            "underruns": self.underruns,
            "warmup_ticks": self.warmup_ticks,
            "timeouts": self.timeouts,
            "failures": self.failures,
            "late_replies_dropped": self.late_replies_dropped,
            "stale_replies_dropped": self.stale_replies_dropped,
            "skipped_actions": self.skipped_actions,
            "chunks": self.chunks,
            "s_above_d": self.s_above_d,
            "jitter_p50_ms": pct(self.jitter_ms, 50),
            "jitter_p99_ms": pct(self.jitter_ms, 99),
            "seam_jerk": float(np.mean(self.seam_jerk)) if self.seam_jerk else None,
            "d_p50": pct(self.delay_ticks, 50),
            "d_p99": pct(self.delay_ticks, 99),
            "s_p50": pct(self.execution_horizons, 50),
            "s_max": max(self.execution_horizons) if self.execution_horizons else None,
        }


class RobotLoop:
    """Executes chunks at a fixed rate; see the module docstring for the per-tick contract.

    ``timeout_ticks``: a request unanswered for that many ticks is abandoned (the link drops
    its session) and asked again; its reply, should it still come, is never executed.
    """

    def __init__(
        self,
        robot: Robot,
        link: PolicyLink,
        action_dim: int,
        hz: float = 50.0,
        timeout_ticks: int = 50,
        on_underrun: Callable[[np.ndarray | None], np.ndarray | None] | None = None,
    ) -> None:
        self.robot = robot
        self.link = link
        self.hz = hz
        self.timeout_ticks = timeout_ticks
        self.on_underrun = on_underrun or (lambda last: last)
        self.buffer = ActionBuffer(action_dim)
        self.stats = LoopStats()
        self.tick = 0
        self._next_request_id = 0
        self._outstanding: tuple[int, int] | None = None  # (request_id, tick sent)
        self._sent_at = 0.0  # monotonic time the outstanding request was sent
        self._report: dict[str, int] | None = None
        self._next_request_tick = 0
        self._last_action: np.ndarray | None = None
        self._started = False
        self._reset_pending = False
        self._stale_request: int | None = None  # in flight when the last episode ended
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one tick, no clock: the whole behaviour, testable without threads or sockets --------

    def step(self) -> np.ndarray | None:
        """Run control tick ``self.tick``; returns the executed action (None while warming up)."""
        t = self.tick
        for reply in self.link.poll():
            self._accept(reply, t)
        if self._outstanding is not None and t - self._outstanding[1] >= self.timeout_ticks:
            self.link.abandon(self._outstanding[0])
            self._outstanding = None
            self.stats.timeouts += 1
        observation = self.robot.observe()
        if self._outstanding is None and t >= self._next_request_tick:
            request_id = self._next_request_id
            self._next_request_id += 1
            if self._reset_pending:
                observation = {**observation, "reset": True}
                self._reset_pending = False
            self._sent_at = time.monotonic()
            self.link.request(request_id, t, observation, self._report)
            self._outstanding = (request_id, t)
            self.stats.requests += 1
        action = self.buffer.pop(t)
        if action is None and not self._started:
            # No chunk yet for this session or episode: the robot is not commanded at all
            # (it stands by, as a real robot does before its first command; a simulated
            # world does not advance), so every strategy starts from the same place.
            self.stats.warmup_ticks += 1
        elif action is None:
            self.stats.underruns += 1
            action = self.on_underrun(self._last_action)
            if action is not None:
                self.buffer.record_held(action)
        if action is not None:
            self.robot.apply(action)
            self._last_action = action
        boundary = getattr(self.robot, "take_episode_boundary", None)
        if boundary is not None and boundary():
            self._new_episode()
        self.tick += 1
        self.stats.ticks += 1
        return action

    def _new_episode(self) -> None:
        """Drop the plan and any request in flight (its reply is for the old episode)."""
        self.buffer = ActionBuffer(self.buffer.action_dim)
        if self._outstanding is not None:
            self._stale_request = self._outstanding[0]
        self._outstanding = None
        self._report = None
        self._started = False
        self._reset_pending = True
        self._next_request_tick = self.tick + 1

    def _accept(self, reply: ChunkReply | RequestFailed, now: int) -> None:
        if self._outstanding is None or reply.request_id != self._outstanding[0]:
            if reply.request_id == self._stale_request:
                self.stats.stale_replies_dropped += 1
            else:
                self.stats.late_replies_dropped += 1
            return
        if isinstance(reply, RequestFailed):
            self._outstanding = None
            self.stats.failures += 1
            return  # the next request goes out this very tick, with a fresh observation
        _, sent = self._outstanding
        self._outstanding = None
        arrival = self.buffer.merge(reply.actions, reply.start_tick, now)
        if not arrival.took:  # older than the plan (a server that answered out of order)
            self.stats.late_replies_dropped += 1
            return
        self._started = True
        self.stats.chunks += 1
        # The server planned for the chunk to take over at tick sent + d, i.e. at its index
        # sent + d - start_tick; leading actions skipped beyond that were lost to lateness.
        self.stats.skipped_actions += max(0, arrival.skipped - max(0, sent + reply.d - reply.start_tick))
        self.stats.delay_ticks.append(now - sent)
        self.stats.seam_ticks.append(arrival.first_tick)
        self.stats.execution_horizons.append(reply.s)
        self.stats.s_above_d += int(reply.s > max(reply.d, 1))
        if "batch_size" in reply.timing:
            self.stats.batch_sizes.append(reply.timing["batch_size"])
        if arrival.seam_jerk is not None:
            self.stats.seam_jerk.append(arrival.seam_jerk)
        # Where the chunk's index 0 really falls on the robot's timeline: later than its start
        # tick when the robot was holding (ticks without a plan consume no actions). The
        # server shifts this chunk by it for the next request.
        # The round trip in milliseconds on this machine's clock, to the moment the reply came
        # off the wire: the server subtracts its own time to learn how long the network
        # takes (durations on each machine's own clock; no clocks are compared).
        self._report = {"request_id": reply.request_id, "tick_sent": sent, "tick_arrived": now,
                        "plan_start": arrival.first_tick - arrival.skipped,
                        "rtt_ms": round(((reply.received_at or time.monotonic()) - self._sent_at) * 1e3, 3)}
        # s actions of this chunk have run at (tick of its index 0) + s; its index 0 ran, or
        # would have, at first_tick - skipped (later than start_tick if the robot was holding).
        self._next_request_tick = arrival.first_tick - arrival.skipped + max(1, reply.s)

    # -- the clock -----------------------------------------------------------------------------

    def run(self, ticks: int | None = None, duration_s: float | None = None, priority: int | None = None,
            clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> LoopStats:
        """Tick on a drift-free schedule (``run_loops`` with this one robot) until stopped,
        ``ticks`` ticks are done or ``duration_s`` seconds of schedule have passed."""
        run_loops([self], duration_s, self._stop, priority, ticks=ticks, clock=clock, sleep=sleep)
        return self.stats

    def tick_due(self, lateness_s: float) -> None:
        """Run the tick the schedule says is due, ``lateness_s`` after its scheduled time
        (recorded as jitter)."""
        self.stats.jitter_ms.append(lateness_s * 1e3)
        self.step()

    def start(self, ticks: int | None = None, duration_s: float | None = None,
              priority: int | None = None) -> threading.Thread:
        """Run in a daemon thread of its own; ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.run, args=(ticks, duration_s, priority), daemon=True,
                                        name="robot-loop")
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def request_realtime_priority(priority: int) -> bool:
    """Ask the OS to schedule the calling thread first (Linux ``SCHED_FIFO`` at ``priority``,
    1..99), as control loops usually run; True when granted. Without the privilege (no root,
    no ``CAP_SYS_NICE``) the thread keeps its normal priority and this returns False."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (AttributeError, OSError):
        return False


def run_loops(loops: list[RobotLoop], duration_s: float | None = None, stop: threading.Event | None = None,
              priority: int | None = None, *, ticks: int | None = None,
              clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
    """Run robots' loops from one thread, each on its own drift-free schedule: the one scheduler.

    Robot ``i`` of ``n`` ticks at ``start + i / (n * hz) + k / hz``: the robots' clocks are
    staggered as independent robots' are, and each tick runs when due. A late tick runs at
    once and the schedule is kept, so lateness never accumulates (the ticks after a late one
    run back to back until they are on time again). One thread instead of one per robot
    keeps many simulated robots in one Python process from fighting over the interpreter
    lock; a real robot runs ``RobotLoop.start`` on its own machine.

    Stops when ``stop`` is set, before the first tick due at or after ``start + duration_s``,
    or once every robot has run ``ticks`` ticks (None: no limit). ``priority``: ask for
    real-time scheduling of this thread (``request_realtime_priority``). ``clock`` and
    ``sleep`` are the time source (seconds) and the way to wait for it.
    """
    if priority is not None:
        request_realtime_priority(priority)
    start = clock()
    end = math.inf if duration_s is None else start + duration_s
    first = [start + i / (loop.hz * len(loops)) for i, loop in enumerate(loops)]
    due = [(first[i], i, 0) for i in range(len(loops))]
    heapq.heapify(due)
    while due and (stop is None or not stop.is_set()):
        target, i, k = heapq.heappop(due)
        if target >= end:
            break
        now = clock()
        if target > now:
            sleep(target - now)
            now = clock()
        loops[i].tick_due(max(0.0, now - target))
        if ticks is None or k + 1 < ticks:
            heapq.heappush(due, (first[i] + (k + 1) / loops[i].hz, i, k + 1))
