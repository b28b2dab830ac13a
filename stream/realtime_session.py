"""The ``/v1/policy`` session's logic, sans I/O: hello, observations, chunks (docs/policy-protocol.md).

``RealtimeSessionState`` holds what the server keeps per robot session: the resolved
strategy, the last chunk sent and the tick it starts at, a ``DelayEstimator`` fed with the
round trips the client reports in ticks, and an ``ExecutionHorizon`` (``stream.horizon``)
fed with the server time of every request. For each observation it builds the engine
request -- the state, the previous chunk shifted to the observation's tick, ``d`` and ``s``
-- and a budget: the time left until the robot runs out of planned actions, less a safety
margin. It never touches a socket or a clock; ``stream.sessions.RealtimePolicySession``
feeds it.

d is the windowed *median* of the reported round trips, not the RTC paper's windowed max.
Served, the delay is not a constant: on a busy server a share of replies lands a tick late.
With the max, one late reply in the window set d for the next eight requests, and an
over-estimated d is no safety margin: RTC freezes the first d actions to the previous
chunk, so a reply that lands after fewer ticks makes the robot execute stale copies -- it
acts d ticks late however fresh the chunk -- and s >= d doubles the open-loop stretch.
A reply later than d costs one seam; an over-estimate costs every request it is in force
(balance, 15% of replies a tick late: rtc 0.13 with the max, 0.65 with the median;
docs/robotics.md, "Served").

Failure modes: a malformed hello or observation raises ``ProtocolError`` (the session
closes with 1008); a request the robot would receive too late is answered
``deadline_exceeded`` by the engine and the previous chunk stays in force.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from chunking.delay import DelayEstimator, DelayEstimatorConfig, clamp_horizons
from chunking.merge import shift_chunk
from stream.horizon import ExecutionHorizon, HorizonConfig, ServedRequest
from stream.protocol import ArrayField, ObservationSpec, ProtocolError

STRATEGIES = ("rtc", "naive", "sync")
SCHEDULES = ("exp", "linear", "ones", "zeros")
ENVELOPE = frozenset({"type", "request_id", "tick", "report", "reset", "prev_chunk", "prev_start_tick"})
# d: the windowed median of recent round trips (see the module docstring for why not the max).
DELAY_QUANTILE = 0.5
# Engine errors that mean the server could not keep up (the execution horizon grows).
LOAD_ERRORS = frozenset({"deadline_exceeded", "queue_full"})


@dataclass(frozen=True)
class RealtimeSettings:
    """A session's strategy, resolved from its hello."""

    strategy: str = "rtc"
    control_hz: float = 50.0
    future_state: bool = False
    beta: float = 1.0  # what `headway bench rtc` found best for H = 16 (docs/robotics.md)
    s: int | None = None  # None: chosen per request from d and the server's headroom (stream.horizon)
    schedule: str = "exp"
    degrade: bool = True
    # Let the engine hold requests to batch robots, as long as the reply still lands within
    # d (round trips are counted without the held ticks, so holding does not raise d).
    batch_hold: bool = True
    budget_ms: float | None = None
    margin_ticks: int = 2

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "control_hz": self.control_hz, "future_state": self.future_state,
                "beta": self.beta, "s": self.s, "schedule": self.schedule,
                "degrade": self.degrade, "batch_hold": self.batch_hold, "budget_ms": self.budget_ms, "margin_ticks": self.margin_ticks}


@dataclass
class PreparedRequest:
    """One observation, ready for the engine."""

    request_id: int
    tick: int
    inputs: dict[str, Any]
    budget_s: float  # hard: the robot runs out of planned actions then
    target_s: float | None  # soft: the batcher may wait for other robots until then
    d: int
    s: int


def _int(message: Mapping[str, Any], name: str, low: int = 0, high: int = 2**53) -> int:
    value = message.get(name)
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
        raise ProtocolError("missing_field" if value is None else "bad_type", f"{name}: expected an integer")
    if not low <= int(value) <= high:
        raise ProtocolError("bad_shape", f"{name}: {int(value)} is outside [{low}, {high}]")
    return int(value)


def _number(message: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not low <= float(value) <= high:
        raise ProtocolError("bad_type", f"{name}: expected a number in [{low}, {high}]")
    return float(value)


def _flag(message: Mapping[str, Any], name: str, default: bool) -> bool:
    value = message.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError("bad_type", f"{name}: expected true or false")
    return value


def _choice(message: Mapping[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = message.get(name, default)
    if value not in choices:
        raise ProtocolError("bad_type", f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


class RealtimeSessionState:
    """Per-session state of ``/v1/policy`` (see the module docstring).

    ``horizon``/``action_dim``/``control_hz`` come from the model's metadata;
    ``spec`` validates the model's own observation fields (state, images).
    """

    def __init__(self, spec: ObservationSpec, horizon: int, action_dim: int, control_hz: float):
        self.spec = ObservationSpec(spec.fields, envelope=ENVELOPE)
        self.horizon = horizon
        self.action_dim = action_dim
        self.model_hz = control_hz
        self.settings = RealtimeSettings(control_hz=control_hz)
        self.delay = DelayEstimator(DelayEstimatorConfig(horizon=horizon, quantile=DELAY_QUANTILE))
        self.execution_horizon = ExecutionHorizon(HorizonConfig(horizon, margin_ticks=self.settings.margin_ticks))
        self.last_chunk: np.ndarray | None = None  # [H, A], index 0 applies at last_start
        self.last_start = 0
        self._last_request_id: int | None = None
        # Server-side seconds of recent requests, and how much of each round trip the client
        # measured (on its own clock) was spent outside the server: the network.
        self._server_s: dict[int, tuple[float, float]] = {}  # request id -> (server s, held s)
        self._outside_s: deque[float] = deque(maxlen=8)
        self._chunk_field = ArrayField(("float32", "float64"), (None, action_dim), cast="float32",
                                       max_size=horizon)

    # -- hello -----------------------------------------------------------------------------

    def hello(self, message: Mapping[str, Any]) -> RealtimeSettings:
        """Resolve the session's strategy from its hello; raises ``ProtocolError``."""
        if message.get("type") != "hello":
            raise ProtocolError("unknown_type", "the first message on /v1/policy is a 'hello'")
        known = {"type", "model", "control_hz", "strategy", "future_state", "beta", "s", "schedule",
                 "degrade", "batch_hold", "budget_ms"}
        for name in message:
            if name not in known:
                raise ProtocolError("unknown_field", f"unknown hello field {name!r} (expected: {', '.join(sorted(known))})")
        s = message.get("s")
        if s is not None:
            s = _int(message, "s", 1, self.horizon)
        budget = message.get("budget_ms")
        if budget is not None:
            budget = _number(message, "budget_ms", 0.0, 1.0, 10_000.0)
        self.settings = RealtimeSettings(
            strategy=_choice(message, "strategy", "rtc", STRATEGIES),
            control_hz=_number(message, "control_hz", self.model_hz, 1.0, 1000.0),
            future_state=_flag(message, "future_state", False),
            beta=_number(message, "beta", RealtimeSettings.beta, 0.0, 100.0),
            s=s,
            schedule=_choice(message, "schedule", "exp", SCHEDULES),
            degrade=_flag(message, "degrade", True),
            batch_hold=_flag(message, "batch_hold", True),
            budget_ms=budget,
        )
        return self.settings

    # -- observations ----------------------------------------------------------------------

    def observation(self, message: Mapping[str, Any]) -> PreparedRequest:
        """Validate one observation and build its engine request; raises ``ProtocolError``."""
        request_id = _int(message, "request_id")
        tick = _int(message, "tick")
        fields = self.spec.validate(message)
        if _flag(message, "reset", False):
            self.last_chunk = None
        report = message.get("report")
        if report is not None:
            if not isinstance(report, Mapping):
                raise ProtocolError("bad_type", "report: expected a map")
            sent, arrived = _int(report, "tick_sent"), _int(report, "tick_arrived")
            if arrived < sent or arrived > tick:
                raise ProtocolError("bad_shape", "report: need tick_sent <= tick_arrived <= tick")
            served, held = self._server_s.pop(report.get("request_id"), (None, 0.0))
            rtt_ms = report.get("rtt_ms")
            if not isinstance(rtt_ms, (int, float)) or isinstance(rtt_ms, bool) or not 0.0 <= rtt_ms <= 60_000.0:
                rtt_ms = None
            self.delay.observe(self._unheld_round_trip(sent, arrived, held, rtt_ms))
            if "plan_start" in report and report.get("request_id") == self._last_request_id:
                # The robot held before this chunk took over (no plan yet, or an underrun), so
                # its index 0 ran later than the tick it was computed for.
                self.last_start = _int(report, "plan_start", self.last_start, tick)
            if served is not None and rtt_ms is not None:
                self._outside_s.append(max(0.0, rtt_ms / 1000.0 - served))
        prev, prev_start = self.last_chunk, self.last_start
        if message.get("prev_chunk") is not None:  # stateless client: it sends its plan back
            prev = self._chunk_field.validate("prev_chunk", message["prev_chunk"])
            prev_start = _int(message, "prev_start_tick")

        settings, H = self.settings, self.horizon
        d_raw = self.delay.d if settings.strategy != "sync" else 0
        if settings.s is not None:
            s_wanted = settings.s
        elif settings.strategy == "sync":
            s_wanted = H
        else:
            s_wanted = self.execution_horizon.s(d_raw)
        d, s = clamp_horizons(d_raw, s_wanted, H)
        inputs: dict[str, Any] = dict(fields)
        offset = tick - prev_start
        covered = prev is not None and 0 <= offset < len(prev)
        if settings.strategy == "rtc" and covered:
            shifted = shift_chunk(prev, offset, H)  # beyond the old plan: its last action, weight 0 in the mask anyway
            rest = min(len(prev) - offset, H)
            # The soft mask must end where the old plan ends (H - offset), not earlier.
            _, s_mask = clamp_horizons(d, max(s, H - rest), H)
            inputs.update(prev_chunk=shifted, d=d, s=s_mask, future_state=settings.future_state,
                          beta=settings.beta, schedule=settings.schedule)
        budget_s = self._budget_s(tick, prev if covered else None, prev_start)
        holds = covered and settings.batch_hold and settings.strategy != "sync"
        target_s = self._batching_target_s(d) if holds else None
        return PreparedRequest(request_id=request_id, tick=tick, inputs=inputs, budget_s=budget_s,
                               target_s=target_s, d=d, s=s)

    def _unheld_round_trip(self, sent: int, arrived: int, held_s: float, rtt_ms: float | None) -> int:
        """The round trip in ticks as it would have been had the server not held the request.

        A round trip the server stretched on purpose (held for batching) says nothing about
        the delay, and a held reply lands as late as d allows: counted as it came, d would
        only ever grow. Holding delays the merge by the tick boundaries the hold made the
        reply cross: with the round trip on the client's clock (``rtt_ms``), those between
        ``rtt - held`` and ``rtt`` -- a 10 ms hold crosses one when it pushes a 15 ms reply
        to 25 ms, none when it pushes a 2 ms one to 12 ms. Without it, the whole ticks held.
        """
        ticks = arrived - sent
        if held_s <= 0.0:
            return ticks
        tick_s = 1.0 / self.settings.control_hz
        if rtt_ms is None:
            crossed = round(held_s / tick_s)
        else:
            rtt_s = rtt_ms / 1000.0
            crossed = math.floor(rtt_s / tick_s + 1e-9) - math.floor(max(0.0, rtt_s - held_s) / tick_s + 1e-9)
        return max(1 if arrived > sent else 0, ticks - crossed)

    def _batching_target_s(self, d: int) -> float | None:
        """How long the server may take on this request, holding it to batch with other
        robots, so that the chunk still lands within the d ticks it assumes.

        The client sends at the start of tick t and merges a reply at the first tick after
        it lands, so a reply that lands before t + d ticks is merged at t + d. d is measured
        from those round trips: a server that took longer would make the next measured d
        larger, and d would ratchet up to H/2. So the target is d ticks less the largest
        recent network time (one tick until one is known) less a 3 ms guard for late ticks;
        None when nothing is left to wait for.
        """
        tick_s = 1.0 / self.settings.control_hz
        network = max(self._outside_s, default=tick_s)
        target = d * tick_s - network - 0.003
        return target if target > 0.0 else None

    def _budget_s(self, tick: int, prev: np.ndarray | None, prev_start: int) -> float:
        """Until the robot runs out of planned actions, less ``margin_ticks``; the hello's
        ``budget_ms`` overrides; a robot with no plan gets one chunk's worth of time."""
        settings = self.settings
        if settings.budget_ms is not None:
            return settings.budget_ms / 1000.0
        tick_s = 1.0 / settings.control_hz
        if prev is None:
            return self.horizon * tick_s
        remaining = prev_start + len(prev) - tick
        return max(1, remaining - settings.margin_ticks) * tick_s

    def completed(self, prepared: PreparedRequest, chunk: np.ndarray, server_s: float = 0.0,
                  queue_s: float = 0.0, compute_s: float = 0.0, degraded: bool = False) -> dict[str, Any]:
        """Record the chunk sent for ``prepared`` (``server_s``: arrival to reply; ``queue_s``:
        arrival to the start of its batch; ``compute_s``: its batched call; seconds;
        ``degraded``: run with fewer denoising steps); returns the reply's fields."""
        if len(self._server_s) >= 32:  # reports never came (reset, reconnect): forget the oldest
            self._server_s.pop(next(iter(self._server_s)))
        held = 0.0
        if prepared.target_s is not None:
            # The engine holds a request until its batch must start to reply by the target;
            # queueing past that was waiting for a busy worker: load, not a hold.
            held = max(0.0, min(queue_s, prepared.target_s - compute_s))
        self._server_s[prepared.request_id] = (server_s, held)
        self.execution_horizon.served(ServedRequest(server_s=server_s, held_s=held, budget_s=prepared.budget_s,
                                                    tick_s=1.0 / self.settings.control_hz, degraded=degraded))
        self.last_chunk = np.asarray(chunk, dtype=np.float32)
        self.last_start = prepared.tick
        self._last_request_id = prepared.request_id
        return {"request_id": prepared.request_id, "actions": self.last_chunk, "start_tick": prepared.tick,
                "d": prepared.d, "s": prepared.s}

    def failed(self, prepared: PreparedRequest, code: str) -> None:
        """Record that the engine answered ``prepared`` with the error ``code`` instead of a
        chunk (the previous chunk stays in force); load errors make s grow."""
        if code in LOAD_ERRORS:
            self.execution_horizon.refused()
