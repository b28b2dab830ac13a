"""The vectorised simulated-task interface shared by every task in ``clients.sim``.

A task simulates ``B`` independent episodes at once as torch tensors on the CPU, one
control tick per :meth:`VectorTask.step`. Conventions:

* States are ``[B, S]`` float32 in robot units; the state *is* the observation (what a
  policy sees). Everything a task needs to advance noise-free is in the state, so
  :meth:`VectorTask.predict_state` can roll it forward without the hidden internals.
* Actions are ``[B, A]`` in the task's *normalised* units, clipped to ``[-1, 1]``.
  :meth:`VectorTask.step` adds Gaussian action noise of std ``action_noise_std`` (0.1
  as in the RTC Kinetix benchmark) after clipping, so closed-loop reaction matters.
* Episodes end (``done``) on success, failure or ``max_steps``; a finished episode is
  frozen (further steps leave it untouched), so a batch can be stepped until all are done.
* Randomness (initial states, action noise, disturbances, target changes) comes only from
  the ``generator`` given to :meth:`reset`, so a seed fixes a whole batch of episodes.
* ``disturbances=False`` switches off the random disturbances (pushes, wind changes).
  Events that belong to the task itself (a new target after a hit, the next obstacle)
  still happen; each unforeseeable event of either kind increments :attr:`events`
  (``[B]`` long), so a window in which ``events`` did not change is exactly the
  noise-free model plus action noise, which is what tests compare :meth:`predict_state` with.
"""

from __future__ import annotations

import math

import torch

from chunking.dynamics import future_state_fn, one_tick_model


class VectorTask:
    """Batched simulated task; subclasses implement the ``_``-prefixed hooks.

    Class attributes every task sets: ``name``, ``state_dim`` (S), ``action_dim`` (A),
    ``control_hz``, ``max_steps``, ``horizon`` (the chunk length H its policies use),
    ``has_target_changes`` (whether :meth:`reaction_ticks` can be finite), ``multimodal``
    (whether the expert picks between distinct modes at random), ``delay_hurts_solve_rate``
    (False for a task whose success waits for a late robot, so that delay shows only in
    :meth:`reaction_ticks`: the goal-conditioned ``table``).
    """

    name: str = ""
    state_dim: int = 0
    action_dim: int = 0
    control_hz: float = 50.0
    max_steps: int = 150
    horizon: int = 16
    has_target_changes: bool = False
    multimodal: bool = False
    delay_hurts_solve_rate: bool = True

    def __init__(self, action_noise_std: float = 0.1, disturbances: bool = True) -> None:
        self.action_noise_std = float(action_noise_std)
        self.disturbances = bool(disturbances)
        self.dt = 1.0 / self.control_hz
        self._future_state = future_state_fn(self.name, self.control_hz)
        self.generator = torch.Generator().manual_seed(0)
        self.state = torch.zeros(0, self.state_dim)
        self.t = torch.zeros(0, dtype=torch.long)
        self._solved = torch.zeros(0, dtype=torch.bool)
        self._failed = torch.zeros(0, dtype=torch.bool)
        self._reaction_sum = torch.zeros(0)
        self._reaction_count = torch.zeros(0)
        self.events = torch.zeros(0, dtype=torch.long)

    # ------------------------------------------------------------------ public API

    @property
    def num_envs(self) -> int:
        return int(self.state.shape[0])

    def reset(self, num_envs: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Start ``num_envs`` fresh episodes; returns the initial states ``[B, S]``."""
        if num_envs < 1:
            raise ValueError("num_envs must be >= 1")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self._solved = torch.zeros(num_envs, dtype=torch.bool)
        self._failed = torch.zeros(num_envs, dtype=torch.bool)
        self._reaction_sum = torch.zeros(num_envs)
        self._reaction_count = torch.zeros(num_envs)
        self.events = torch.zeros(num_envs, dtype=torch.long)
        self.state = self._reset_state(num_envs)
        return self.state.clone()

    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Advance every unfinished episode one control tick; returns states ``[B, S]``.

        ``actions`` are normalised, ``[B, A]``; they are clipped to [-1, 1] and then get
        the action noise. Finished episodes keep their state.
        """
        actions = self._check_actions(actions)
        active = ~self.done()
        commanded = actions.clamp(-1.0, 1.0)
        noise = torch.randn(commanded.shape, generator=self.generator) * self.action_noise_std
        self._advance(commanded, commanded + noise, active)
        self.t = self.t + active.long()
        return self.state.clone()

    def observe(self) -> torch.Tensor:
        """Current states ``[B, S]`` (a copy)."""
        return self.state.clone()

    def solved(self) -> torch.Tensor:
        """``[B]`` bool, latched: the episode met its success criterion."""
        return self._solved.clone()

    def failed(self) -> torch.Tensor:
        """``[B]`` bool, latched: the episode failed before succeeding."""
        return self._failed.clone()

    def done(self) -> torch.Tensor:
        """``[B]`` bool: solved, failed, or ran out of ``max_steps``."""
        return self._solved | self._failed | (self.t >= self.max_steps)

    def expert_action(self) -> torch.Tensor:
        """The scripted expert's noise-free action ``[B, A]`` for the current full state."""
        return self._expert(self.state, self._expert_mode()).clamp(-1.0, 1.0)

    def hold_action(self) -> torch.Tensor:
        """``[B, A]``: the action that means "stand still" (synchronous execution waits with it)."""
        return torch.zeros(self.num_envs, self.action_dim)

    def expert_chunk(self, state: torch.Tensor | None = None, horizon: int | None = None) -> torch.Tensor:
        """Chunk-level expert: ``[B, H, A]`` planned open-loop from ``state`` (default: the
        current state) by rolling the expert through the noise-free model, with the
        episode's hidden mode (e.g. which side to pass). This is what an ideal chunking
        policy would output; execution strategies are measured against it."""
        x = self.state if state is None else state
        h = self.horizon if horizon is None else int(horizon)
        mode = self._expert_mode()
        out = []
        for _ in range(h):
            a = self._expert(x, mode).clamp(-1.0, 1.0)
            out.append(a)
            x = self._model_step(x, a)
        return torch.stack(out, dim=1)

    def predict_state(
        self, state: torch.Tensor, pending: torch.Tensor, steps: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Future-state rollout (VLASH): the state after executing ``pending`` actions.

        ``state`` ``[B, S]``, ``pending`` ``[B, k, A]`` normalised actions still to be
        executed before the new chunk starts; ``steps`` (int or ``[B]`` long, default k)
        says how many of them apply to each item (item b uses ``pending[b, :steps[b]]``).
        Noise-free and event-free: action noise and random disturbances are unknown at
        prediction time. Pure function: does not touch the simulator's episodes. The rollout
        is ``chunking.dynamics.future_state_fn``, the one the server uses.
        """
        if state.dim() != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be [B, {self.state_dim}], got {tuple(state.shape)}")
        if pending.dim() != 3 or pending.shape[0] != state.shape[0] or pending.shape[2] != self.action_dim:
            raise ValueError(f"pending must be [B, k, {self.action_dim}], got {tuple(pending.shape)}")
        k = pending.shape[1]
        if steps is None:
            steps_t = torch.full((state.shape[0],), k, dtype=torch.long)
        elif isinstance(steps, int):
            steps_t = torch.full((state.shape[0],), steps, dtype=torch.long)
        else:
            steps_t = steps.to(torch.long).reshape(-1)
        if bool((steps_t > k).any()) or bool((steps_t < 0).any()):
            raise ValueError("steps must lie in [0, pending.shape[1]]")
        return self._future_state(state.to(torch.float32), pending.to(torch.float32), steps_t)

    def reaction_ticks(self) -> torch.Tensor:
        """``[B]`` float: mean ticks from a target change to the robot's response, over the
        changes of each episode so far; NaN where no change was responded to (or the task
        has none). What counts as a response is defined by each task."""
        mean = self._reaction_sum / self._reaction_count.clamp(min=1)
        return torch.where(self._reaction_count > 0, mean, torch.full_like(mean, math.nan))

    # ------------------------------------------------------------------ hooks

    def _reset_state(self, num_envs: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        """Advance ``self.state`` and internals for ``active`` items; ``executed`` = commanded + noise."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _model_step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Noise-free, event-free one-tick model on state vectors (pure): the task's model in
        ``chunking.dynamics``, which the server's future-state rollout uses too."""
        return one_tick_model(self.name)(state, action, self.dt)

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        """Expert action for state vectors given the hidden mode (pure)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _expert_mode(self) -> torch.Tensor | None:
        return None

    # ------------------------------------------------------------------ helpers

    def _check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        actions = torch.as_tensor(actions, dtype=torch.float32)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"actions must be [{self.num_envs}, {self.action_dim}], got {tuple(actions.shape)}")
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("actions must be finite")
        return actions

    def _uniform(self, shape, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.generator)

    def _record_reaction(self, responded: torch.Tensor, ticks: torch.Tensor) -> None:
        self._reaction_sum = self._reaction_sum + torch.where(responded, ticks.float(), torch.zeros_like(self._reaction_sum))
        self._reaction_count = self._reaction_count + responded.float()


def braking_velocity(error: torch.Tensor, accel: float) -> torch.Tensor:
    """Velocity that reaches ``error`` = 0 with constant deceleration ``accel`` (the
    time-optimal switching curve of a double integrator), signed toward the target."""
    return torch.sign(error) * torch.sqrt(2.0 * accel * error.abs())
