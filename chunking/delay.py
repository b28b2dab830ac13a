"""Inference delay ``d`` in control ticks, estimated from what was actually executed.

A round trip is measured in ticks on the robot's own clock: the tick the observation was
taken at (the request tick) and the tick at which the reply's chunk was merged, i.e. the
number of actions the robot executed from the old chunk meanwhile. No wall clocks of two
machines are compared (DESIGN.md, rule 6).

The estimate is the RTC paper's (Algorithm 1): the maximum over a small buffer of recent
delays, with two guards against the failure of the LeRobot port (prior-art notes §6.7,
a 21-tick warm-up call made every later merge skip 21 actions because its running max
never forgot it):

* the first ``warmup`` observations (compilation, cold caches, connection set-up) are not
  counted at all;
* the buffer is a window of the last ``window`` observations, so a later spike is
  forgotten after ``window`` normal round trips; ``quantile < 1`` makes it a windowed
  percentile instead of a max, which ignores isolated spikes entirely.

The estimate only sets the *conditioning* ``d`` (how many actions RTC freezes). Merging a
reply uses the tick the reply applies from (``chunking.merge``), so even a wrong estimate
never skips or repeats actions. ``d`` is clamped so that ``d <= s <= H - d`` can hold.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence, overload

import torch


@overload
def clamp_horizons(d: int, s: int, horizon: int) -> tuple[int, int]: ...
@overload
def clamp_horizons(d: torch.Tensor, s: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def clamp_horizons(d, s, horizon):
    """Clamp ``(d, s)`` to RTC's constraint ``d <= s <= H - d`` (ints or long tensors).

    ``d`` is limited to ``[0, H // 2]`` (the largest delay the constraint admits), then
    ``s`` is raised to at least ``max(d, 1)`` and lowered to at most ``H - d``.
    """
    if isinstance(d, torch.Tensor) or isinstance(s, torch.Tensor):
        d_t = torch.as_tensor(d, dtype=torch.long).clamp(0, horizon // 2)
        s_t = torch.as_tensor(s, dtype=torch.long)
        s_t = torch.minimum(torch.maximum(s_t, d_t.clamp(min=1)), horizon - d_t)
        return d_t, s_t
    d_i = min(max(int(d), 0), horizon // 2)
    s_i = min(max(int(s), d_i, 1), horizon - d_i)
    return d_i, s_i


@dataclass
class DelayEstimatorConfig:
    """``horizon``: H. ``window``: recent round trips kept. ``warmup``: first round trips
    ignored. ``quantile``: 1.0 = windowed max (RTC), e.g. 0.9 = windowed 90th
    percentile. ``initial``: d before any counted round trip."""

    horizon: int
    window: int = 8
    warmup: int = 1
    quantile: float = 1.0
    initial: int = 0

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.window < 1 or self.warmup < 0 or not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"invalid DelayEstimatorConfig {self}")


class DelayEstimator:
    """Estimated inference delay in ticks for one session (one robot). Not thread-safe:
    one owner (the session or the control loop) feeds and reads it."""

    def __init__(self, config: DelayEstimatorConfig) -> None:
        self.config = config
        self._recent: deque[int] = deque(maxlen=config.window)
        self.seen = 0  # round trips observed, warm-up included

    def observe(self, ticks: int) -> None:
        """Record one round trip of ``ticks`` control ticks (``>= 0``)."""
        if ticks < 0:
            raise ValueError(f"a round trip cannot take {ticks} ticks")
        self.seen += 1
        if self.seen > self.config.warmup:
            self._recent.append(int(ticks))

    def observe_round_trip(self, request_tick: int, merged_tick: int) -> None:
        """Record a round trip from the tick the observation was taken at to the tick
        the reply was merged at (the actions the robot executed meanwhile)."""
        self.observe(merged_tick - request_tick)

    @property
    def raw(self) -> int:
        """The windowed quantile of counted round trips (``initial`` if none), unclamped."""
        if not self._recent:
            return int(self.config.initial)
        ordered = sorted(self._recent)
        index = max(0, math.ceil(self.config.quantile * len(ordered)) - 1)
        return ordered[index]

    @property
    def d(self) -> int:
        """The delay to condition the next request on, clamped to ``[0, H // 2]``."""
        return clamp_horizons(self.raw, self.raw, self.config.horizon)[0]

    def horizons(self, s: int) -> tuple[int, int]:
        """``(d, s)`` for the next request with desired execution horizon ``s``, clamped
        so that ``d <= s <= H - d``."""
        return clamp_horizons(self.raw, s, self.config.horizon)

    def reset(self) -> None:
        """Forget everything (a new episode on the same connection keeps its estimator;
        a reconnect should reset it, since warm-up may happen again)."""
        self._recent.clear()
        self.seen = 0


def batch_delays(estimators: Sequence[DelayEstimator], s: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d [B], s [B])`` long tensors for a batch whose items each have their own
    estimator and desired execution horizon, clamped per item (``d <= s <= H - d``)."""
    s_list = s.tolist() if isinstance(s, torch.Tensor) else list(s)
    if len(s_list) != len(estimators):
        raise ValueError(f"{len(estimators)} estimators but {len(s_list)} execution horizons")
    pairs = [est.horizons(int(si)) for est, si in zip(estimators, s_list)]
    return (
        torch.tensor([p[0] for p in pairs], dtype=torch.long),
        torch.tensor([p[1] for p in pairs], dtype=torch.long),
    )
