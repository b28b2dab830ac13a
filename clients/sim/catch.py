"""Catch: move a paddle along the floor to catch balls that fly, bounce off walls and drift in gusty wind.

* **State** (S=7): paddle position px [m] and velocity [m/s]; ball position (bx, by) [m]
  and velocity (bvx, bvy) [m/s]; the current wind acceleration w [m/s^2] on the ball.
  Side walls at |x| = 1 reflect the ball elastically (impacts).
* **Action** (A=1): paddle acceleration, normalised; 1.0 = ``ACCEL`` m/s^2, linear drag ``DRAG``.
* **Control rate**: 50 Hz; at most 150 ticks; H = 16.
* **Disturbances**: the wind jumps to a new random value about every ``GUST_EVERY`` ticks,
  moving the landing spot late in the flight.
* **Success**: ``BALLS`` balls caught one after another (a ball is caught when it reaches
  the floor within ``HALF_WIDTH`` of the paddle centre; the next is thrown at once). A ball
  that lands beside the paddle is a failure.
* **Expert**: predicts the landing spot (ballistic flight with the current wind, walls
  folded in) and drives the paddle there with the time-optimal braking velocity.

Why delay hurts: gusts in the last few hundred milliseconds of a flight move the landing
spot by about a paddle width; a stale plan arrives at the old spot.
"""

from __future__ import annotations

import torch

from chunking.dynamics.catch import ACCEL, DRAG, GRAVITY

from .base import VectorTask, braking_velocity

HALF_WIDTH = 0.1
BALLS = 3
WIND = 4.0
GUST_EVERY = 15.0
SPAWN_HEIGHT = 1.4


def fold(x: torch.Tensor) -> torch.Tensor:
    """Position after elastic reflections between walls at -1 and 1."""
    y = torch.remainder(x + 1.0, 4.0)
    return torch.where(y <= 2.0, y, 4.0 - y) - 1.0


class CatchTask(VectorTask):
    name = "catch"
    state_dim = 7
    action_dim = 1
    control_hz = 50.0
    max_steps = 150
    horizon = 16

    def _reset_state(self, num_envs: int) -> torch.Tensor:
        px = self._uniform(num_envs, -0.3, 0.3)
        pv = torch.zeros(num_envs)
        ball = self._throw(num_envs)
        wind = self._uniform(num_envs, -WIND, WIND) if self.disturbances else torch.zeros(num_envs)
        self._caught = torch.zeros(num_envs, dtype=torch.long)
        return torch.cat([px[:, None], pv[:, None], ball, wind[:, None]], dim=1)

    def _throw(self, b: int) -> torch.Tensor:
        bx = self._uniform(b, -0.8, 0.8)
        by = torch.full((b,), SPAWN_HEIGHT)
        bvx = self._uniform(b, -2.0, 2.0)
        bvy = self._uniform(b, 0.0, 1.0)
        return torch.stack([bx, by, bvx, bvy], dim=1)

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        nxt = self._model_step(self.state, executed)
        b = self.num_envs
        landed = active & (nxt[:, 3] <= 0.0)
        caught_now = landed & ((nxt[:, 2] - nxt[:, 0]).abs() < HALF_WIDTH)
        caught = self._caught + caught_now.long()
        solved = caught_now & (caught >= BALLS)
        rethrow = caught_now & ~solved
        nxt[:, 2:6] = torch.where(rethrow[:, None], self._throw(b), nxt[:, 2:6])
        gust = active & (torch.rand(b, generator=self.generator) < 1.0 / GUST_EVERY)
        new_wind = self._uniform(b, -WIND, WIND)
        if self.disturbances:
            nxt[:, 6] = torch.where(gust, new_wind, nxt[:, 6])
            self.events = self.events + gust.long()
        self.events = self.events + rethrow.long()
        self.state = torch.where(active[:, None], nxt, self.state)
        self._caught = caught
        self._solved = self._solved | solved
        self._failed = self._failed | (landed & ~caught_now)

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        px, pv, bx, by, bvx, bvy, wind = state.unbind(1)
        t_land = (bvy + torch.sqrt((bvy.square() + 2.0 * GRAVITY * by).clamp(min=0.0))) / GRAVITY
        t_land = t_land.clamp(min=0.0)
        x_land = fold(bx + bvx * t_land + 0.5 * wind * t_land.square())
        v_star = braking_velocity(x_land - px, 0.8 * ACCEL)
        return ((20.0 * (v_star - pv) + DRAG * pv) / ACCEL).clamp(-1.0, 1.0)[:, None]
