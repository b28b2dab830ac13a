"""The robot side of real-time chunking: which action runs at which tick.

Sans-I/O: no threads, no sockets, no clocks. ``RobotLoop`` drives it once per control tick.

Ticks count actions: tick ``t`` is the index of the action the robot executes at its t-th
control step since the session started. A chunk says at which tick its first action applies
(``start_tick``); the buffer keeps, for every future tick, the action planned for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChunkArrival:
    """What merging one chunk did."""

    first_tick: int  # first tick whose action now comes from the new chunk
    skipped: int  # leading actions of the new chunk not executed: the old plan ran in their ticks
    seam_jerk: float | None  # |a_t - 2 a_{t-1} + a_{t-2}| (L2) at the switch; None before 2 actions ran


@dataclass
class ActionBuffer:
    """Planned actions by tick, merged from arriving chunks.

    Contract:
      * ``merge(actions, start_tick, now)`` replaces every planned action at ticks >= ``now``
        with the new chunk's; ticks the new chunk does not cover are dropped (an older plan
        is never resumed after a newer one). A late chunk does not replay the past: the
        actions for ticks in which the old plan ran are ``skipped``. Ticks in which the robot
        *held* (no plan: warm-up or an underrun) consumed nothing, so the new chunk resumes
        where the plan stopped instead of jumping ahead by the time spent waiting.
      * ``pop(now)`` returns the action for tick ``now``, or ``None`` (an underrun: the
        caller holds) when no plan covers it.
    """

    action_dim: int
    _start: int = 0
    _actions: np.ndarray = field(default=None)  # type: ignore[assignment]
    _history: list[np.ndarray] = field(default_factory=list)
    _holding_since: int | None = None

    def __post_init__(self) -> None:
        self._actions = np.zeros((0, self.action_dim), dtype=np.float32)

    @property
    def end_tick(self) -> int:
        """One past the last tick with a planned action."""
        return self._start + len(self._actions)

    def remaining(self, now: int) -> int:
        """Planned actions at ticks >= now."""
        return max(0, self.end_tick - max(now, self._start))

    def merge(self, actions: np.ndarray, start_tick: int, now: int) -> ChunkArrival:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"chunk must be [H, {self.action_dim}], got {actions.shape}")
        ran_until = now if self._holding_since is None else min(now, self._holding_since)
        skipped = min(len(actions), max(0, ran_until - start_tick))
        first = max(start_tick + skipped, now)
        self._actions = actions[skipped:]
        self._start = first
        jerk = None
        if len(self._history) >= 2 and len(self._actions):
            a2, a1 = self._history[-2], self._history[-1]
            jerk = float(np.linalg.norm(self._actions[0] - 2 * a1 + a2))
        return ChunkArrival(first_tick=first, skipped=skipped, seam_jerk=jerk)

    def pop(self, now: int) -> np.ndarray | None:
        i = now - self._start
        if i < 0 or i >= len(self._actions):
            if self._holding_since is None:
                self._holding_since = now
            return None
        self._holding_since = None
        action = self._actions[i]
        self._history = [*self._history[-1:], action]
        return action

    def record_held(self, action: np.ndarray) -> None:
        """Note an action executed without a plan (a hold), so seam jerk sees it."""
        self._history = [*self._history[-1:], np.asarray(action, dtype=np.float32)]
