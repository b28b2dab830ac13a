"""The execution horizon s of a robot session: the smallest the server can afford.

Sans-I/O: no clocks, no sockets. ``RealtimeSessionState`` feeds it, per request, what the
session already sees -- the server time of each answered request, the part of it held on
purpose for batching, the budget the request had, whether it was degraded, and the
requests the engine refused (``deadline_exceeded``, ``queue_full``) -- and asks it for s
given the current delay estimate d.

The rule:

* **Headroom**: s = max(d, 1), the most closed-loop choice RTC's ``d <= s <= H - d``
  admits (what the in-process sweep uses). Moderate load needs nothing more: a slower
  server makes the measured d, and so s, larger by itself.
* **Load**: a request refused, degraded, or whose server time (less the batching hold)
  took more than ``grow_above`` of its budget, adds one tick to s; at most one tick per
  ``cooldown`` requests, so each step shows its effect before the next. A larger s means
  fewer requests per robot and second, so smaller batches and shorter queues for all.
* **Recovery**: after ``recover_after`` requests in a row that used less than
  ``shrink_below`` of their budget and were not degraded, s gives one tick back.
* **Bounds**: s never exceeds ``s_max`` (default H // 2) nor H - d, nor what the budget
  affords: a request made after s actions has ``H - s - margin_ticks`` ticks before the
  robot runs out, and a larger s only helps while that still covers the server time of
  recent requests with a tick to spare (growing s past it would turn slow replies into
  missed ones).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class HorizonConfig:
    """Parameters of :class:`ExecutionHorizon` (see the module docstring).

    ``horizon``: H. ``margin_ticks``: the safety margin the session's budgets keep before
    the robot runs out. ``window``: recent requests whose server time bounds s.
    """

    horizon: int
    margin_ticks: int = 2
    grow_above: float = 0.5
    shrink_below: float = 0.25
    cooldown: int = 4
    recover_after: int = 16
    window: int = 16
    s_max: int | None = None

    def __post_init__(self) -> None:
        if self.horizon < 2 or self.margin_ticks < 0 or self.cooldown < 1 or self.recover_after < 1 \
                or self.window < 1 or not 0.0 < self.shrink_below < self.grow_above:
            raise ValueError(f"invalid HorizonConfig {self}")
        if self.s_max is not None and not 1 <= self.s_max <= self.horizon:
            raise ValueError(f"s_max must be in [1, H={self.horizon}], got {self.s_max}")


@dataclass(frozen=True)
class ServedRequest:
    """What a session saw of one request the engine answered (seconds)."""

    server_s: float  # arrival at the server -> reply
    held_s: float  # of that, held on purpose to batch with other robots (not load)
    budget_s: float  # the hard budget the request had (until the robot runs out, less the margin)
    tick_s: float  # the robot's control period
    degraded: bool  # the engine could make the budget only with fewer denoising steps


class ExecutionHorizon:
    """s for one session's next request (see the module docstring). One owner feeds it."""

    def __init__(self, config: HorizonConfig) -> None:
        self.config = config
        self.extra = 0  # ticks added to max(d, 1) under load
        self._since_step = config.cooldown  # requests since s last grew
        self._calm = 0  # requests in a row with headroom
        self._busy_ticks: deque[float] = deque(maxlen=config.window)  # recent server time, ticks

    def served(self, request: ServedRequest) -> None:
        """Record a request the engine answered."""
        busy_s = max(0.0, request.server_s - request.held_s)
        self._busy_ticks.append(busy_s / request.tick_s)
        load = busy_s / request.budget_s if request.budget_s > 0 else math.inf
        self._since_step += 1
        if request.degraded or load > self.config.grow_above:
            self._under_load()
        elif load < self.config.shrink_below:
            self._calm += 1
            if self._calm >= self.config.recover_after:
                self._calm = 0
                self.extra = max(0, self.extra - 1)
        else:
            self._calm = 0

    def refused(self) -> None:
        """Record a request the engine refused for load (``deadline_exceeded``, ``queue_full``)."""
        self._since_step += 1
        self._under_load()

    def _under_load(self) -> None:
        self._calm = 0
        if self._since_step >= self.config.cooldown:
            self._since_step = 0
            self.extra = min(self.extra + 1, self.s_max - 1)

    @property
    def s_max(self) -> int:
        return self.config.s_max if self.config.s_max is not None else self.config.horizon // 2

    def s(self, d: int) -> int:
        """The execution horizon for a request conditioned on delay ``d`` (ticks)."""
        c = self.config
        floor = max(int(d), 1)
        busy = math.ceil(max(self._busy_ticks, default=0.0))
        affordable = c.horizon - c.margin_ticks - busy - 1
        cap = min(self.s_max, c.horizon - int(d), affordable)
        return max(floor, min(floor + self.extra, cap))
