"""The robot side of real-time chunking: which action runs at which tick.

Sans-I/O: no threads, no sockets, no clocks. ``RobotLoop`` drives it once per control tick.

Ticks count actions: tick ``t`` is the index of the action the robot executes at its t-th
control step since the session started. A chunk says at which tick its first action applies
(``start_tick``); the buffer keeps, for every future tick, the action planned for it. The
merge itself, and its rule for stale chunks, is ``chunking.merge.merge_chunk`` (numpy only:
the client needs no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chunking.merge import ChunkPlan, merge_chunk


@dataclass
class ChunkArrival:
    """What merging one chunk did."""

    took: bool  # False: a stale chunk (older than the plan), not merged
    first_tick: int  # first tick whose action now comes from the new chunk
    skipped: int  # leading actions of the new chunk not executed: the old plan ran in their ticks
    seam_jerk: float | None  # |a_t - 2 a_{t-1} + a_{t-2}| (L2) at the switch; None before 2 actions ran


class ActionBuffer:
    """Planned actions by tick, merged from arriving chunks.

    Contract:
      * ``merge(actions, start_tick, now)`` merges by ``chunking.merge.merge_chunk``'s rule:
        the new chunk's actions replace every planned action at ticks >= ``now``; ticks it does
        not cover have no plan (an older plan is never resumed after a newer one); a chunk
        older than the plan is stale and not merged. A late chunk does not replay the past:
        the actions for ticks in which the old plan ran are ``skipped``. Ticks in which the
        robot *held* (``pop`` found no plan: warm-up or an underrun) consumed nothing, so the
        new chunk resumes where the plan stopped instead of jumping ahead by the time spent
        waiting.
      * ``pop(now)`` returns the action for tick ``now``, or ``None`` (an underrun: the
        caller holds) when no plan covers it.
    """

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self._plan: ChunkPlan | None = None
        self._history: list[np.ndarray] = []  # the last two actions executed
        self._holding_since: int | None = None

    @property
    def end_tick(self) -> int:
        """One past the last tick with a planned action."""
        return self._plan.end_tick if self._plan is not None else 0

    def remaining(self, now: int) -> int:
        """Planned actions at ticks >= now."""
        return self._plan.remaining(now) if self._plan is not None else 0

    def merge(self, actions: np.ndarray, start_tick: int, now: int) -> ChunkArrival:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"chunk must be [H, {self.action_dim}], got {actions.shape}")
        merged = merge_chunk(self._plan, actions, start_tick, now, ran_until=self._holding_since)
        self._plan = merged.plan
        jerk = None
        if merged.took and len(self._history) >= 2 and len(merged.plan.actions):
            a2, a1 = self._history[-2], self._history[-1]
            jerk = float(np.linalg.norm(merged.plan.actions[0] - 2 * a1 + a2))
        return ChunkArrival(took=merged.took, first_tick=merged.plan.first_tick, skipped=merged.skipped,
                            seam_jerk=jerk)

    def pop(self, now: int) -> np.ndarray | None:
        action = self._plan.action_at(now) if self._plan is not None else None
        if action is None:
            if self._holding_since is None:
                self._holding_since = now
            return None
        self._holding_since = None
        self._history = [*self._history[-1:], action]
        return action

    def record_held(self, action: np.ndarray) -> None:
        """Note an action executed without a plan (a hold), so seam jerk sees it."""
        self._history = [*self._history[-1:], np.asarray(action, dtype=np.float32)]
