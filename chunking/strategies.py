"""Execution strategies behind one interface a control loop calls once per tick.

``request_chunk`` is the inference side (what to compute when a chunk is requested);
``ChunkedController`` is the loop side (when to request, how the delay plays out, how an
arriving chunk takes over). Both work with any ``ChunkPolicy`` (flow or diffusion).

Timing model (the RTC paper's, in control ticks). A request at tick ``t`` is computed
from the observation at ``t`` and becomes available ``d`` ticks later. With execution
horizon ``s`` (``d <= s <= H - d``):

* ``sync``: the robot waits for every chunk. It requests at ``t``, executes the hold
  action (the caller's "stand still": zero acceleration for the simulated tasks, the last
  position for a position-controlled arm) for ``d`` ticks while the world goes on, then
  executes the chunk's first ``s`` actions (index 0 at tick ``t + d``). Cycle ``s + d``;
  any ``1 <= s <= H`` (nothing overlaps), ``s = H`` being the whole chunk open loop.
* ``naive``: asynchronous. The old chunk keeps executing during ``t .. t+d-1``; at
  ``t + d`` the new chunk takes over at index ``d``. Cycle ``s``.
* ``ensemble``: asynchronous, ACT temporal ensembling: each arrived chunk votes on every
  tick it covers (``chunking.ensemble``). Cycle ``s``.
* ``bid``: asynchronous; the new chunk is the most coherent of N samples (``chunking.bid``).
* ``hard_mask``: asynchronous RTC with the ``"zeros"`` schedule (freeze the first ``d``).
* ``rtc``: asynchronous RTC, exponential soft mask, guidance clipped at ``beta``.
* ``rtc_future``: ``rtc`` with the policy conditioned on the state rolled through the
  ``d`` pending actions (``chunking.future_state``; the caller supplies the rollout).
* ``rti``: asynchronous; the new chunk is warm-started from the old plan shifted to the
  request tick and denoised for the last few steps only (``chunking.rti``).

The first chunk of an episode is computed before the first tick (no delay) for every
strategy, so that all start from the same place; delays apply from the second request on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch

from chunking.bid import BIDConfig, bid_chunk
from chunking.ensemble import EnsembleConfig, TemporalEnsemble
from chunking.future_state import FutureStateFn
from chunking.merge import ChunkPlan, merge_chunk
from chunking.realtime import RealtimeConfig, realtime_chunk
from chunking.rti import RTIConfig, warm_start_chunk

if TYPE_CHECKING:
    from policies.base import ChunkPolicy

STRATEGIES: tuple[str, ...] = ("sync", "naive", "ensemble", "bid", "hard_mask", "rtc", "rtc_future", "rti")
HoldFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StrategyConfig:
    """One execution strategy and its parameters (defaults: the reference values)."""

    name: str
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    bid: BIDConfig = field(default_factory=BIDConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    rti: RTIConfig = field(default_factory=RTIConfig)
    num_steps: int | None = None  # denoising steps (policy default if None)

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r}; expected one of {STRATEGIES}")


def request_chunk(
    config: StrategyConfig,
    policy: "ChunkPolicy",
    state: torch.Tensor,
    prev_chunk: torch.Tensor,
    has_prev: torch.Tensor,
    d: int | torch.Tensor,
    s: int | torch.Tensor,
    future_state_fn: FutureStateFn | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The chunk ``[B, H, A]`` (robot units, index 0 = the request tick) that strategy
    ``config.name`` computes for a request at the tick of ``state``.

    ``prev_chunk`` is the chunk being executed, shifted to the request tick (tail held).
    ``rtc_future`` needs ``future_state_fn``; raises ``ValueError`` without it.
    """
    name = config.name
    steps = config.num_steps
    if name in ("sync", "naive", "ensemble"):
        return policy.sample(state, num_steps=steps, generator=generator)
    if name == "bid":
        return bid_chunk(policy, state, prev_chunk, has_prev, d, s, config.bid, steps, generator)
    if name == "rti":
        return warm_start_chunk(policy, state, prev_chunk, has_prev, config.rti, steps, generator)
    if name == "hard_mask":
        rt = RealtimeConfig(beta=config.realtime.beta, schedule="zeros")
        return realtime_chunk(policy, state, prev_chunk, has_prev, d, s, rt, None, steps, generator)
    if name == "rtc":
        return realtime_chunk(policy, state, prev_chunk, has_prev, d, s, config.realtime, None, steps, generator)
    if future_state_fn is None:
        raise ValueError("rtc_future needs a future_state_fn (state, pending, n) -> state")
    return realtime_chunk(policy, state, prev_chunk, has_prev, d, s, config.realtime, future_state_fn, steps, generator)


class ChunkedController:
    """Runs one strategy for a batch of robots that tick in lockstep, with the inference
    delay simulated in ticks (the chunk is computed at request time and handed over ``d``
    ticks later). Call :meth:`act` once per control tick with the current states.

    After each :meth:`act`, ``switched`` says whether this tick's action was the first one
    taken from a newly arrived chunk (a *seam*), and ``holding`` whether the robot waited.
    """

    def __init__(
        self,
        policy: "ChunkPolicy",
        config: StrategyConfig,
        d: int,
        s: int,
        *,
        future_state_fn: FutureStateFn | None = None,
        hold_action: HoldFn | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        horizon = policy.config.horizon
        if config.name == "sync":
            # The robot waits for every chunk, so nothing overlaps: any 1 <= s <= H (s = H is
            # how synchronous VLAs usually run, the whole chunk open loop).
            if d < 0 or not 1 <= s <= horizon:
                raise ValueError(f"sync needs d >= 0 and 1 <= s <= H (H={horizon}), got d={d}, s={s}")
        elif not 0 <= d <= s <= horizon - d or s < 1:
            raise ValueError(f"need d <= s <= H - d and s >= 1 (H={horizon}), got d={d}, s={s}")
        if config.name == "rtc_future" and future_state_fn is None:
            raise ValueError("rtc_future needs a future_state_fn")
        self.policy, self.config, self.d, self.s, self.horizon = policy, config, d, s, horizon
        self.future_state_fn = future_state_fn
        self.hold_action = hold_action or (lambda state, last: last)
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Start a new episode for the whole batch (the next :meth:`act` is tick 0)."""
        self.tick = 0
        self.plan: ChunkPlan | None = None  # what the batch executes, [B, n, A] by tick
        self.pending: tuple[torch.Tensor, int, int] | None = None  # (chunk, ready tick, start tick)
        self.next_request = 0
        self.ensemble = TemporalEnsemble(self.config.ensemble)
        self.last_action: torch.Tensor | None = None
        self.switched = False
        self.holding = False
        self.requests = 0

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch items ``index`` (long ``[B']``), e.g. drop finished episodes
        so that later requests cost less. The timing state is shared and unchanged."""
        if self.plan is not None:
            self.plan = replace(self.plan, actions=self.plan.actions[index.numpy()])
        if self.pending is not None:
            chunk, ready, start = self.pending
            self.pending = (chunk[index], ready, start)
        self.ensemble.chunks = [(t0, c[index]) for t0, c in self.ensemble.chunks]
        if self.last_action is not None:
            self.last_action = self.last_action[index]

    def _prev(self) -> torch.Tensor:
        assert self.plan is not None
        return torch.from_numpy(self.plan.shifted_to(self.tick, self.horizon, fill="last"))

    def _take(self, chunk: torch.Tensor, start: int) -> None:
        """Merge an arrived chunk (index 0 at tick ``start``) at the current tick."""
        self.plan = merge_chunk(self.plan, chunk.detach().numpy(), start, self.tick).plan
        self.ensemble.add(chunk, start)

    def _request(self, state: torch.Tensor) -> torch.Tensor:
        batch = state.shape[0]
        self.requests += 1
        if self.plan is None:  # first chunk of the episode: nothing to be consistent with
            empty = torch.zeros(batch, self.horizon, self.policy.config.action_dim)
            has = torch.zeros(batch, dtype=torch.bool)
            return request_chunk(self.config, self.policy, state, empty, has, 0, self.s, self.future_state_fn, self.generator)
        has = torch.ones(batch, dtype=torch.bool)
        return request_chunk(self.config, self.policy, state, self._prev(), has, self.d, self.s, self.future_state_fn, self.generator)

    def act(self, state: torch.Tensor) -> torch.Tensor:
        """The action ``[B, A]`` (robot units) to execute at the current tick."""
        k = self.tick
        self.switched = False
        self.holding = False
        sync = self.config.name == "sync"

        if self.plan is None:  # tick 0: the first chunk is ready at once
            self._take(self._request(state), 0)
            self.next_request = self.s
        else:
            if self.pending is not None and k == self.pending[1]:
                chunk, _, start = self.pending
                self.pending = None
                self._take(chunk, start)
                self.switched = True
            if k == self.next_request:
                chunk = self._request(state)
                if sync:  # wait d ticks, then execute from index 0
                    self.pending = (chunk, k + self.d, k + self.d)
                    self.next_request = k + self.d + self.s
                else:
                    self.pending = (chunk, k + self.d, k)
                    self.next_request = k + self.s
                if self.d == 0:  # arrives at once
                    chunk, _, start = self.pending
                    self.pending = None
                    self._take(chunk, start)
                    self.switched = True

        if sync and self.pending is not None:
            assert self.last_action is not None
            action = self.hold_action(state, self.last_action)
            self.holding = True
        elif self.config.name == "ensemble":
            action = self.ensemble.action(k)
        else:
            planned = self.plan.action_at(k)
            assert planned is not None, "d <= s <= H - d keeps every tick planned"
            action = torch.from_numpy(planned)
        self.last_action = action
        self.tick += 1
        return action
