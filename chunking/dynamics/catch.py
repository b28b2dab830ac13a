"""Catch's one-tick model: a paddle on the floor and a ball in flight under gravity and wind.

State (S=7): paddle position px [m] and velocity [m/s]; ball position (bx, by) [m] and
velocity (bvx, bvy) [m/s]; the wind acceleration w [m/s^2] on the ball. Action (A=1): paddle
acceleration, normalised (1.0 = ``ACCEL``), linear drag ``DRAG``. Side walls at |x| = 1 stop
the paddle and reflect the ball elastically.
"""

from __future__ import annotations

import torch

GRAVITY = 9.81
ACCEL = 25.0  # m/s^2 per unit action
DRAG = 1.0  # 1/s


def step(state: torch.Tensor, action: torch.Tensor, dt: float) -> torch.Tensor:
    """``state`` [B, 7] after one tick of ``dt`` seconds with ``action`` [B, 1]."""
    px, pv, bx, by, bvx, bvy, wind = state.unbind(1)
    pv = pv + (ACCEL * action[:, 0] - DRAG * pv) * dt
    px = px + pv * dt
    pv = torch.where(px.abs() > 1.0, torch.zeros_like(pv), pv)
    px = px.clamp(-1.0, 1.0)
    bvx = bvx + wind * dt
    bvy = bvy - GRAVITY * dt
    bx = bx + bvx * dt
    by = by + bvy * dt
    out_wall = bx.abs() > 1.0
    bx = torch.where(out_wall, torch.sign(bx) * 2.0 - bx, bx)
    bvx = torch.where(out_wall, -bvx, bvx)
    return torch.stack([px, pv, bx, by, bvx, bvy, wind], dim=1)
