"""Balance's one-tick model: an inverted pendulum on an acceleration-controlled cart.

State (S=4): cart position x [m], cart velocity [m/s], pole angle theta [rad, 0 = upright],
pole angular velocity [rad/s]. Action (A=1): cart acceleration, normalised (1.0 = ``ACCEL``).
theta'' = (g sin theta - a cos theta) / l, semi-implicit Euler at the control rate.
"""

from __future__ import annotations

import torch

GRAVITY = 9.81
POLE_LENGTH = 0.25  # m (point mass at the tip)
ACCEL = 25.0  # m/s^2 per unit action


def step(state: torch.Tensor, action: torch.Tensor, dt: float) -> torch.Tensor:
    """``state`` [B, 4] after one tick of ``dt`` seconds with ``action`` [B, 1]."""
    x, xd, th, thd = state.unbind(1)
    a = ACCEL * action[:, 0]
    thdd = (GRAVITY * torch.sin(th) - a * torch.cos(th)) / POLE_LENGTH
    xd = xd + a * dt
    thd = thd + thdd * dt
    return torch.stack([x + xd * dt, xd, th + thd * dt, thd], dim=1)
