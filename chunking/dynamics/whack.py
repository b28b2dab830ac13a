"""Whack's one-tick model: an effector accelerating in a walled square arena.

State (S=6): effector position (px, py) [m], velocity (vx, vy) [m/s], the mole's position
(tx, ty) [m]. Action (A=2): effector acceleration, normalised (1.0 = ``ACCEL`` per axis),
linear drag ``DRAG``; inelastic walls at ``ARENA``.
"""

from __future__ import annotations

import torch

ACCEL = 14.0  # m/s^2 per unit action
DRAG = 1.0  # 1/s
ARENA = 1.0  # m


def step(state: torch.Tensor, action: torch.Tensor, dt: float) -> torch.Tensor:
    """``state`` [B, 6] after one tick of ``dt`` seconds with ``action`` [B, 2]."""
    p, v, target = state[:, 0:2], state[:, 2:4], state[:, 4:6]
    v = v + (ACCEL * action - DRAG * v) * dt
    p = p + v * dt
    hit_wall = p.abs() > ARENA
    v = torch.where(hit_wall, torch.zeros_like(v), v)
    p = p.clamp(-ARENA, ARENA)
    return torch.cat([p, v, target], dim=1)
