"""Slalom: fly forward past pillars, passing each on the left or the right (multimodal expert).

* **State** (S=4): lateral position y [m], lateral velocity [m/s], forward distance dx to
  the next pillar's centre [m], the pillar's lateral position c [m]. The craft flies
  forward at a constant ``SPEED``; only the next pillar is visible, and the one after
  appears (``SPACING`` m further on, at a random c) once the craft is past it.
* **Action** (A=1): lateral acceleration, normalised; 1.0 = ``ACCEL`` m/s^2.
* **Control rate**: 50 Hz; at most 150 ticks; H = 16.
* **Success**: ``PILLARS`` pillars passed without touching one (radius ``PILLAR_RADIUS``
  plus the craft's ``CRAFT_RADIUS``) or a side wall at |y| = 1.
* **Expert**: picks a side per pillar at random (50/50, unless the far side is out of
  reach) and tracks the clearance line c +- (radius + margin) with the time-optimal
  braking velocity. The hidden side choice makes the action distribution bimodal, so
  two chunks sampled independently can pick different sides at a seam.

Why delay hurts: the next pillar appears only ~0.45 s before it must be cleared and the
swerve needs most of that time; seeing it d + s ticks late crashes.
"""

from __future__ import annotations

import torch

from chunking.dynamics.slalom import ACCEL

from .base import VectorTask, braking_velocity

PILLAR_RADIUS = 0.2
CRAFT_RADIUS = 0.05
MARGIN = 0.1
SPACING = 1.2
PILLARS = 4
WALL = 1.0
REACH = 0.9  # farther lateral moves than this take the near side


class SlalomTask(VectorTask):
    name = "slalom"
    state_dim = 4
    action_dim = 1
    control_hz = 50.0
    max_steps = 150
    horizon = 16
    multimodal = True

    def _reset_state(self, num_envs: int) -> torch.Tensor:
        y = self._uniform(num_envs, -0.2, 0.2)
        vy = torch.zeros(num_envs)
        dx = self._uniform(num_envs, 0.8, 1.0)
        c = self._uniform(num_envs, -0.35, 0.35)
        self._passed = torch.zeros(num_envs, dtype=torch.long)
        state = torch.stack([y, vy, dx, c], dim=1)
        self._side = self._pick_side(state)
        return state

    def _pick_side(self, state: torch.Tensor) -> torch.Tensor:
        y, c = state[:, 0], state[:, 3]
        clear = PILLAR_RADIUS + CRAFT_RADIUS + MARGIN
        coin = torch.where(torch.rand(state.shape[0], generator=self.generator) < 0.5, 1.0, -1.0)
        far_up = ((c + clear) - y).abs() > REACH
        far_down = ((c - clear) - y).abs() > REACH
        return torch.where(far_up, -1.0, torch.where(far_down, 1.0, coin))

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        nxt = self._model_step(self.state, executed)
        y, vy, dx, c = nxt.unbind(1)
        reach = PILLAR_RADIUS + CRAFT_RADIUS
        crashed = (dx.square() + (y - c).square() < reach**2) | (y.abs() > WALL - CRAFT_RADIUS)
        passed_now = active & ~crashed & (dx < -reach)
        passed = self._passed + passed_now.long()
        solved = passed_now & (passed >= PILLARS)
        spawn = passed_now & ~solved
        new_c = self._uniform(self.num_envs, -0.35, 0.35)
        nxt = torch.stack([y, vy, torch.where(spawn, dx + SPACING, dx), torch.where(spawn, new_c, c)], dim=1)
        self.state = torch.where(active[:, None], nxt, self.state)
        self._side = torch.where(spawn, self._pick_side(self.state), self._side)
        self._passed = passed
        self.events = self.events + spawn.long()
        self._failed = self._failed | (active & crashed)
        self._solved = self._solved | solved

    def _expert_mode(self) -> torch.Tensor:
        return self._side

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        y, vy, _, c = state.unbind(1)
        side = mode if mode is not None else torch.ones_like(y)
        y_star = c + side * (PILLAR_RADIUS + CRAFT_RADIUS + MARGIN)
        v_star = braking_velocity(y_star - y, 0.8 * ACCEL)
        return (20.0 * (v_star - vy) / ACCEL).clamp(-1.0, 1.0)[:, None]
