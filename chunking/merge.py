"""Chunk bookkeeping in control ticks: shift a chunk by executed ticks, merge an arriving one.

The one implementation of the chunk merge: the robot client's ``ActionBuffer``, the server's
``/v1/policy`` session (the previous chunk shifted to an observation's tick), the in-process
execution strategies and the RTC future-state call all use it. Numpy only, so that a robot
client can import it without torch (``import chunking.merge`` imports no torch).

Every chunk carries the tick at which its index 0 applies (its *start tick*, stated by
whoever computed it). The action executed at tick ``k`` from a chunk that starts at ``t0``
is ``chunk[k - t0]``. Merging therefore never consults a delay *estimate*: it uses the start
tick the producer stated and the tick the robot is at, so a mis-estimated delay (e.g. a slow
warm-up call) cannot make the robot skip or repeat actions (the LeRobot bug of the prior-art
notes, §6.7).

Arrays keep the tick axis second to last: one chunk is ``[H, A]``, a batch of chunks that
tick in lockstep ``[B, H, A]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Fill = Literal["last", "zero"]


def shift_chunk(chunk: np.ndarray, k: int | np.ndarray, length: int | None = None,
                fill: Fill = "last") -> np.ndarray:
    """``out[..., i, :] = chunk[..., i + k, :]`` for ``i < length`` (default: the chunk's own
    length), so that index 0 of the result is the action ``k`` ticks after the chunk's start.

    ``k`` is an int, or one int per item (``[B]``) for a batch ``[B, H, A]``. Positions past
    the end of ``chunk`` hold its last action (``"last"``, the RTI-DP convention: a plan that
    runs out holds) or zeros (``"zero"``, the RTC reference convention for the previous chunk
    ``Y``; those positions carry zero guidance weight anyway). Returns a new array.
    Raises ``ValueError`` on a negative shift (a chunk cannot be shifted into the past), an
    empty chunk or an unknown ``fill``.
    """
    if fill not in ("last", "zero"):
        raise ValueError(f"unknown fill {fill!r}")
    chunk = np.asarray(chunk)
    horizon = chunk.shape[-2]
    if horizon == 0:
        raise ValueError("shift_chunk: the chunk has no actions")
    shifts = np.asarray(k, dtype=np.int64)
    if (shifts < 0).any():
        raise ValueError("shift_chunk: shifts must be >= 0 (a chunk cannot be shifted into the past)")
    length = horizon if length is None else int(length)
    index = np.arange(length) + shifts[..., None]  # [L] or [B, L]
    past_end = index >= horizon
    out = np.take_along_axis(chunk, np.minimum(index, horizon - 1)[..., None], axis=-2) if index.ndim > 1 \
        else chunk[..., np.minimum(index, horizon - 1), :]
    if fill == "zero":
        out = np.where(past_end[..., None], np.zeros((), dtype=chunk.dtype), out)
    return out


@dataclass(frozen=True)
class ChunkPlan:
    """What runs at which tick: ``actions[..., i, :]`` at tick ``first_tick + i``; no action is
    planned before ``first_tick`` or from ``end_tick`` on.

    ``chunk_start`` is the start tick the chunk's producer stated; it orders plans (see
    :func:`merge_chunk`). ``first_tick - skipped`` of the merge that made the plan is where the
    chunk's index 0 fell on the robot's timeline (later than ``chunk_start`` after a hold).
    """

    actions: np.ndarray  # [n, A], or [B, n, A] for robots that tick in lockstep
    first_tick: int
    chunk_start: int

    @property
    def end_tick(self) -> int:
        """One past the last tick with a planned action."""
        return self.first_tick + self.actions.shape[-2]

    def remaining(self, now: int) -> int:
        """Planned actions at ticks >= ``now``."""
        return max(0, self.end_tick - max(now, self.first_tick))

    def action_at(self, tick: int) -> np.ndarray | None:
        """The action ``[A]`` (or ``[B, A]``) planned for ``tick``; None where no plan covers it."""
        i = tick - self.first_tick
        if i < 0 or i >= self.actions.shape[-2]:
            return None
        return self.actions[..., i, :]

    def shifted_to(self, tick: int, length: int, fill: Fill = "last") -> np.ndarray:
        """The plan re-indexed so that index 0 is ``tick`` (``length`` actions, tail filled as
        :func:`shift_chunk` does). Raises ``ValueError`` if ``tick`` is before ``first_tick``."""
        return shift_chunk(self.actions, tick - self.first_tick, length, fill)


@dataclass(frozen=True)
class Merge:
    """What merging one arriving chunk did."""

    plan: ChunkPlan  # the plan from now on
    took: bool  # False: the chunk was stale (see merge_chunk) and the old plan goes on
    skipped: int  # leading actions of the chunk not executed: the old plan ran in their ticks


def merge_chunk(plan: ChunkPlan | None, actions: np.ndarray, start_tick: int, now: int,
                ran_until: int | None = None) -> Merge:
    """Merge a chunk (``actions`` ``[H, A]`` or ``[B, H, A]``, index 0 at ``start_tick``) that
    arrives at tick ``now`` into ``plan``.

    The stale-chunk rule, the one rule for every caller:

    * A chunk whose producer stated an earlier start tick than the current plan's (a reply
      overtaken by a newer one) is **stale**: it is not merged (``took`` False), the plan goes on.
    * Any other chunk replaces the whole plan from ``now`` on; ticks it does not cover have no
      plan (an older plan is never resumed after a newer one), even when nothing of the new
      chunk is left for ``now`` (every tick it covers already ran from the old plan): the robot
      then holds, and the next request starts afresh.

    A late chunk does not replay the past: the leading actions for ticks in which the old plan
    ran are ``skipped``. Ticks in which the robot *held* (no plan: warm-up or an underrun)
    consumed nothing, so the chunk resumes where the plan stopped instead of jumping ahead by
    the time spent waiting: ``ran_until`` is the first tick the robot held without a plan
    (default ``now``: it never held). A chunk that starts after ``now`` waits for its start
    tick (nothing is planned before it).
    """
    if plan is not None and start_tick < plan.chunk_start:
        return Merge(plan=plan, took=False, skipped=0)
    actions = np.asarray(actions)
    ran_until = now if ran_until is None else min(now, ran_until)
    skipped = min(actions.shape[-2], max(0, ran_until - start_tick))
    first = max(start_tick + skipped, now)
    return Merge(plan=ChunkPlan(actions[..., skipped:, :], first, start_tick), took=True, skipped=skipped)
