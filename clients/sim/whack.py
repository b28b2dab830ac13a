"""Whack: touch moles that pop up one after another; each hit makes the next one appear elsewhere.

* **State** (S=6): effector position (px, py) [m], velocity (vx, vy) [m/s], current mole
  position (tx, ty) [m]. Arena [-1, 1]^2 with inelastic walls.
* **Action** (A=2): effector acceleration, normalised; 1.0 = ``ACCEL`` m/s^2 per axis,
  with linear drag ``DRAG``.
* **Control rate**: 50 Hz; at most 150 ticks (3 s); H = 16.
* **Target changes**: when the effector comes within ``HIT_RADIUS`` of the mole, the mole
  jumps at once to a new random spot (``MIN_JUMP`` to ``MAX_JUMP`` m away, sideways to
  the effector's current motion). :meth:`reaction_ticks` is the mean, over an episode's
  jumps, of the ticks from the jump until the effector has gained ``RESPONSE_DV`` m/s of
  velocity toward the new mole (relative to its velocity at the jump): the first tick at
  which the robot is visibly accelerating toward the new target.
* **Success**: ``MOLES`` moles hit, each within its lifetime (a mole left too long is a
  failure). The lifetime is the time-optimal rest-to-rest time over the mole's distance
  at 0.8 ``ACCEL`` (in ticks) plus ``LIFETIME_SLACK`` ticks, so every mole leaves the
  expert the same few ticks of slack, whatever its distance.
* **Expert**: per axis, track the time-optimal braking velocity toward the mole.

Why delay hurts: every jump is unforeseeable; an execution strategy that sees the new mole
d + s ticks late eats into a lifetime that the expert needs most of.
"""

from __future__ import annotations

import torch

from chunking.dynamics.whack import ACCEL, ARENA, DRAG

from .base import VectorTask, braking_velocity

HIT_RADIUS = 0.1
MOLES = 4
LIFETIME_SLACK = 0
MIN_JUMP = 0.6
MAX_JUMP = 1.2
RESPONSE_DV = 0.4


class WhackTask(VectorTask):
    name = "whack"
    state_dim = 6
    action_dim = 2
    control_hz = 50.0
    max_steps = 150
    horizon = 16
    has_target_changes = True

    def _reset_state(self, num_envs: int) -> torch.Tensor:
        p = self._uniform((num_envs, 2), -0.5, 0.5)
        v = torch.zeros(num_envs, 2)
        target = self._new_target(p, v)
        self._hits = torch.zeros(num_envs, dtype=torch.long)
        self._age = torch.zeros(num_envs, dtype=torch.long)  # ticks since the mole appeared
        self._lifetime = self._lifetime_for(p, target)
        self._jump_from = p.clone()  # effector position when the mole last jumped
        self._jump_velocity = v.clone()  # and its velocity then
        self._awaiting = torch.zeros(num_envs, dtype=torch.bool)  # a jump not yet responded to
        return torch.cat([p, v, target], dim=1)

    def _new_target(self, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A random mole MIN_JUMP..MAX_JUMP away, sideways to the current motion (60-120 degrees
        off the velocity), by rejection among 16 candidates. Sideways, so that braking after
        the old mole is not mistaken for a response to the new one."""
        b = p.shape[0]
        cand = self._uniform((b, 16, 2), -0.9 * ARENA, 0.9 * ARENA)
        rel = cand - p[:, None, :]
        dist = rel.norm(dim=2)
        speed = v.norm(dim=1, keepdim=True)
        ahead = (rel * v[:, None, :]).sum(2) / (dist * speed).clamp(min=1e-6)
        ok = (dist >= MIN_JUMP) & (dist <= MAX_JUMP) & ((speed < 0.2) | (ahead.abs() < 0.5))
        ok[:, -1] = True  # fallback: the last candidate (rarely needed)
        first = ok.float().argmax(dim=1)
        return cand[torch.arange(b), first]

    def _lifetime_for(self, p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dist = (target - p).norm(dim=1)
        rest_to_rest = 2.0 * torch.sqrt(dist / (0.8 * ACCEL)) * self.control_hz
        return torch.ceil(rest_to_rest).long() + LIFETIME_SLACK

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        nxt = self._model_step(self.state, executed)
        p, v, target = nxt[:, 0:2], nxt[:, 2:4], nxt[:, 4:6]
        age = self._age + 1

        # Response to the last jump: velocity gained toward the new mole since the jump.
        to_target = target - self._jump_from
        direction = to_target / to_target.norm(dim=1, keepdim=True).clamp(min=1e-6)
        gained = ((v - self._jump_velocity) * direction).sum(1)
        responded = active & self._awaiting & (gained > RESPONSE_DV)
        self._record_reaction(responded, age)
        awaiting = self._awaiting & ~responded

        hit = active & ((p - target).norm(dim=1) < HIT_RADIUS)
        hits = self._hits + hit.long()
        solved = hit & (hits >= MOLES)
        jump = hit & ~solved
        new_target = torch.where(jump[:, None], self._new_target(p, v), target)
        timed_out = active & ~hit & (age >= self._lifetime)
        nxt = torch.cat([p, v, new_target], dim=1)

        self.state = torch.where(active[:, None], nxt, self.state)
        self._hits = hits
        self._age = torch.where(jump, torch.zeros_like(age), torch.where(active, age, self._age))
        self._jump_from = torch.where(jump[:, None], p, self._jump_from)
        self._jump_velocity = torch.where(jump[:, None], v, self._jump_velocity)
        self._lifetime = torch.where(jump, self._lifetime_for(p, new_target), self._lifetime)
        self._awaiting = torch.where(active, awaiting | jump, self._awaiting)
        self.events = self.events + jump.long()
        self._solved = self._solved | solved
        self._failed = self._failed | (timed_out & ~solved)

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        p, v, target = state[:, 0:2], state[:, 2:4], state[:, 4:6]
        v_star = braking_velocity(target - p, 0.8 * ACCEL)
        return (20.0 * (v_star - v) / ACCEL + DRAG * v / ACCEL).clamp(-1.0, 1.0)
