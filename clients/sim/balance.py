"""Balance: keep a short inverted pendulum upright on an acceleration-controlled cart.

* **State** (S=4): cart position x [m], cart velocity [m/s], pole angle theta [rad, 0 =
  upright], pole angular velocity [rad/s].
* **Action** (A=1): cart acceleration, normalised; 1.0 = ``ACCEL`` m/s^2.
* **Dynamics**: pendulum on an accelerating pivot, theta'' = (g sin theta - a cos theta) / l,
  semi-implicit Euler at the control rate. Random pushes (impulses on the pole's angular
  velocity, about every ``PUSH_EVERY`` ticks) that the noise-free model cannot foresee.
* **Control rate**: 50 Hz; episodes of 150 ticks (3 s); H = 16.
* **Success**: the pole stays within +-``THETA_LIMIT`` and the cart within +-``X_LIMIT``
  for all 150 ticks. Failure otherwise.
* **Expert**: discrete-time LQR on the linearised model (gains from the Riccati iteration).

Why delay hurts: the pole falls with time constant 1/sqrt(g/l), about 0.1 s, so acting on
an observation 4-8 ticks (80-160 ms) old, with noise and pushes in between, loses it.
"""

from __future__ import annotations

import numpy as np
import torch

from chunking.dynamics.balance import ACCEL, GRAVITY, POLE_LENGTH

from .base import VectorTask

THETA_LIMIT = 0.5  # rad
X_LIMIT = 1.5  # m
PUSH_EVERY = 30.0  # mean ticks between pushes
PUSH_SIZE = (1.0, 2.0)  # |delta theta_dot| rad/s


def _lqr_gain(dt: float) -> np.ndarray:
    """Discrete LQR gain K (u = -K x) for the linearised pole, by Riccati iteration."""
    w2 = GRAVITY / POLE_LENGTH
    a_c = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, w2, 0]], dtype=np.float64)
    b_c = np.array([[0], [ACCEL], [0], [-ACCEL / POLE_LENGTH]], dtype=np.float64)
    a_d = np.eye(4) + a_c * dt
    b_d = b_c * dt
    q = np.diag([2.0, 0.2, 20.0, 0.5])
    r = np.array([[0.5]])
    p = q.copy()
    for _ in range(5000):
        k = np.linalg.solve(r + b_d.T @ p @ b_d, b_d.T @ p @ a_d)
        p_next = q + a_d.T @ p @ (a_d - b_d @ k)
        if np.max(np.abs(p_next - p)) < 1e-10:
            p = p_next
            break
        p = p_next
    return np.linalg.solve(r + b_d.T @ p @ b_d, b_d.T @ p @ a_d)


class BalanceTask(VectorTask):
    name = "balance"
    state_dim = 4
    action_dim = 1
    control_hz = 50.0
    max_steps = 150
    horizon = 16

    def __init__(self, action_noise_std: float = 0.1, disturbances: bool = True) -> None:
        super().__init__(action_noise_std, disturbances)
        self._gain = torch.tensor(_lqr_gain(self.dt), dtype=torch.float32)  # [1, 4]

    def _reset_state(self, num_envs: int) -> torch.Tensor:
        x = self._uniform(num_envs, -0.3, 0.3)
        xd = self._uniform(num_envs, -0.3, 0.3)
        th = self._uniform(num_envs, -0.15, 0.15)
        thd = self._uniform(num_envs, -0.5, 0.5)
        return torch.stack([x, xd, th, thd], dim=1)

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        nxt = self._model_step(self.state, executed)
        b = self.num_envs
        push_now = torch.rand(b, generator=self.generator) < (1.0 / PUSH_EVERY)
        size = self._uniform(b, *PUSH_SIZE) * torch.where(torch.rand(b, generator=self.generator) < 0.5, -1.0, 1.0)
        if self.disturbances:
            push_now = push_now & active
            nxt[:, 3] = nxt[:, 3] + torch.where(push_now, size, torch.zeros(b))
            self.events = self.events + push_now.long()
        self.state = torch.where(active[:, None], nxt, self.state)
        fell = (self.state[:, 2].abs() > THETA_LIMIT) | (self.state[:, 0].abs() > X_LIMIT)
        self._failed = self._failed | (active & fell)
        survived = active & ~self._failed & (self.t + 1 >= self.max_steps)
        self._solved = self._solved | survived

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        return -(state @ self._gain.T)
