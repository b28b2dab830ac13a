"""Table's one-tick model: a point gripper over a flat table, velocity-commanded with a lag.

State (S=10): gripper position (px, py) [m], velocity (vx, vy) [m/s], the goal token: goal
target (gx, gy) [m] and the goal kind one-hot (reach, move, region, stop) -- the goal enters
the observation as a prompt enters a VLA's. Action (A=2): commanded velocity, normalised
(1.0 = ``V_MAX`` m/s per axis). The gripper's velocity follows the command with a first-order
lag of time constant ``TAU`` (a robot's velocity loop); the table's edges at ``HALF_X``,
``HALF_Y`` stop it (the velocity component into the edge is zeroed). The goal token does not
change here: only the person (the task's events) changes a goal.

JS-portable on purpose (docs/table_task.md spells the same step out for the browser).
"""

from __future__ import annotations

import torch

HALF_X = 0.6  # m: the table is 1.2 m wide (x, left to right) ...
HALF_Y = 0.4  # m: ... and 0.8 m deep (y, bottom to top)
V_MAX = 0.5  # m/s per unit action
TAU = 0.05  # s: velocity lag


def step(state: torch.Tensor, action: torch.Tensor, dt: float) -> torch.Tensor:
    """``state`` [B, 10] after one tick of ``dt`` seconds with ``action`` [B, 2]."""
    p, v, goal = state[:, 0:2], state[:, 2:4], state[:, 4:]
    v = v + (V_MAX * action - v) * (dt / TAU)
    p = p + v * dt
    limit = torch.tensor([HALF_X, HALF_Y], dtype=state.dtype)
    outside = p.abs() > limit
    v = torch.where(outside, torch.zeros_like(v), v)
    p = torch.maximum(torch.minimum(p, limit), -limit)
    return torch.cat([p, v, goal], dim=1)
