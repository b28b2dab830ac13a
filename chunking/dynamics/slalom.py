"""Slalom's one-tick model: a craft flying forward at constant speed, accelerating sideways.

State (S=4): lateral position y [m], lateral velocity [m/s], forward distance dx to the next
pillar [m], the pillar's lateral position c [m]. Action (A=1): lateral acceleration,
normalised (1.0 = ``ACCEL``).
"""

from __future__ import annotations

import torch

SPEED = 2.0  # m/s forward
ACCEL = 30.0  # m/s^2 per unit action


def step(state: torch.Tensor, action: torch.Tensor, dt: float) -> torch.Tensor:
    """``state`` [B, 4] after one tick of ``dt`` seconds with ``action`` [B, 1]."""
    y, vy, dx, c = state.unbind(1)
    vy = vy + ACCEL * action[:, 0] * dt
    return torch.stack([y + vy * dt, vy, dx - SPEED * dt, c], dim=1)
