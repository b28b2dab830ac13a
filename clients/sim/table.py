"""Table: the demo world's table (../shared/WORLD.md); a point gripper goes where the person says.

* **State** (S=10), which is the observation: gripper position (px, py) [m], velocity
  (vx, vy) [m/s], then the **goal token**: the goal's target (gx, gy) [m] and a one-hot of
  its kind (reach, move, region, stop). The table spans x in [-0.6, 0.6] m (left to right)
  and y in [-0.4, 0.4] m (bottom to top); ``chunking.dynamics.table`` has the physics.
* **Action** (A=2): the gripper's commanded velocity, normalised (1.0 = 0.5 m/s per axis),
  followed with a 50 ms first-order lag.
* **Control rate**: 50 Hz; at most 320 ticks (6.4 s); H = 50 (one second, as a pi0-style VLA).
* **Objects**: three or four objects (a colour of ``COLORS`` times a shape of ``SHAPES``, at
  most one of each pair) at random places at least ``OBJECT_SPACING`` apart
  (:attr:`TableTask.objects`). They are scenery for the goals: the policy does not see them.
* **Goals** (``models.world_grammar``'s goal types): reach an object, move (dx, dy) steps of
  ``STEP`` m from where the gripper is when the goal is given, go to a region's centre
  (:data:`REGION_CENTRES`), stop (the target is where the gripper comes to rest when it is
  commanded to stand still). :func:`goal_target` grounds a goal dict to (target, kind) from
  the table's state, the way a VLA grounds its prompt in the image; the policy gets the
  grounded goal token, so a goal change is an observation change and nothing else.
* **Goal changes** (the task's events): each episode starts with a goal at least
  ``MIN_SWITCH_DISTANCE`` away and changes it ``CHANGES`` times at random ticks, the first
  while the gripper is on its way (mid-motion: the chunk in flight was planned for the old
  goal), each new target off to the side of or behind the current motion (at least 90
  degrees from the velocity), so that turning toward it is a visible response.
  :meth:`reaction_ticks` is the mean over an episode's changes (to goals other than stop) of
  the ticks from the change until the gripper *heads for the new goal*: its speed is above
  ``HEADING_SPEED`` and its velocity lies within ``HEADING_ANGLE_DEG`` of the direction to
  the new target. Every sample is also kept in :attr:`TableTask.reaction_samples`.
* **Success**: the gripper within ``GOAL_RADIUS`` of the final goal's target and slower than
  ``SETTLE_SPEED`` for ``SETTLE_TICKS`` ticks in a row (at rest there) before the episode's
  300 ticks run out. Delay does not make this fail (the table waits for a late robot):
  it costs reaction time, which is the table's measure (``delay_hurts_solve_rate`` False).
* **Expert**: track a braking-curve velocity toward the target (cruise ``CRUISE`` m/s, brake
  at ``BRAKE`` m/s^2, proportional near the target), changing the velocity by at most
  ``ACCEL`` m/s^2 (the command compensates the lag), so a new goal bends the path smoothly.

Why delay matters here: a new goal is seen at the next request and acted on d ticks later,
and a synchronous robot also finishes (or waits out) the chunk it was executing. A goal
change is unforeseeable; what real-time chunking can do is keep the turn smooth (no jump at
the seam) without waiting, and future state lets the new chunk start where the robot will be.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from chunking.dynamics.table import HALF_X, HALF_Y, TAU, V_MAX

from .base import VectorTask

COLORS = ("red", "green", "blue", "yellow")  # as models.world_grammar.COLORS
SHAPES = ("cube", "ball", "ring")  # as models.world_grammar.SHAPES
GOAL_KINDS = ("reach", "move", "region", "stop")  # the one-hot's order in the state
REGION_CENTRES: dict[str, tuple[float, float]] = {
    "centre": (0.0, 0.0),
    "left": (-0.42, 0.0), "right": (0.42, 0.0), "top": (0.0, 0.27), "bottom": (0.0, -0.27),
    "top_left": (-0.45, 0.28), "top_right": (0.45, 0.28),
    "bottom_left": (-0.45, -0.28), "bottom_right": (0.45, -0.28),
}
STEP = 0.05  # m: one "step" of a move goal
MARGIN = 0.05  # m: objects and goal targets stay this far inside the table's edges
OBJECT_SPACING = 0.15  # m
GOAL_RADIUS = 0.04  # m
SETTLE_SPEED = 0.08  # m/s
SETTLE_TICKS = 10  # consecutive ticks at rest within GOAL_RADIUS
HEADING_SPEED = 0.05  # m/s
HEADING_ANGLE_DEG = 45.0
MIN_SWITCH_DISTANCE = 0.3  # m: new targets at least this far from the gripper
CHANGES = 2  # goal changes per episode
FIRST_CHANGE = (10, 40)  # ticks after the start, uniform
NEXT_CHANGE = (60, 100)  # ticks after the previous change, uniform
KIND_WEIGHTS = (0.4, 0.2, 0.3, 0.1)  # reach, move, region, stop (stop never starts an episode)
CRUISE = 0.45  # m/s
BRAKE = 2.0  # m/s^2
GAIN_P = 6.0  # 1/s near the target
ACCEL = 5.0  # m/s^2: the expert's largest change of velocity

def stop_target(p: torch.Tensor, v: torch.Tensor, dt: float) -> torch.Tensor:
    """Where the gripper at ``p`` [B, 2] moving at ``v`` comes to rest when commanded to stand
    still (the lag's discrete geometric series): the target of a stop goal."""
    alpha = dt / TAU
    return p + v * dt * (1.0 - alpha) / alpha


def clamp_to_table(xy: torch.Tensor) -> torch.Tensor:
    """``xy`` [..., 2] clamped to the table less ``MARGIN``."""
    limit = torch.tensor([HALF_X - MARGIN, HALF_Y - MARGIN])
    return torch.maximum(torch.minimum(xy, limit), -limit)


def goal_token(target: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """The goal's part of the observation: ``[B, 6]`` = target (x, y) and the kind one-hot."""
    return torch.cat([target, torch.nn.functional.one_hot(kind, len(GOAL_KINDS)).float()], dim=1)


def goal_target(goal: Mapping[str, Any], gripper: Sequence[float], velocity: Sequence[float],
                objects: Sequence[Mapping[str, Any]], dt: float = 0.02) -> tuple[tuple[float, float], str] | None:
    """Ground a goal of ``models.world_grammar`` (``{"action": "reach", "color": .., "shape": ..}``,
    ``{"action": "move", "dx": .., "dy": ..}``, ``{"action": "region", "region": ..}``,
    ``{"action": "stop"}``; ``"wait"`` counts as stop) in the table's state: returns
    ((x, y), kind) for the goal token, or None when the goal names no object on the table (or
    is not a goal of the robot's: resume, faster, ... are the caller's business).

    ``objects``: dicts with ``color``, ``shape``, ``x``, ``y``. A reach goal with the colour or
    the shape left out takes the nearest object that matches the rest.
    """
    action = goal.get("action")
    px, py = float(gripper[0]), float(gripper[1])
    if action == "reach":
        matches = [o for o in objects
                   if goal.get("color") in (None, o["color"]) and goal.get("shape") in (None, o["shape"])]
        if not matches:
            return None
        best = min(matches, key=lambda o: (o["x"] - px) ** 2 + (o["y"] - py) ** 2)
        return (float(best["x"]), float(best["y"])), "reach"
    if action == "move":
        xy = clamp_to_table(torch.tensor([px + STEP * float(goal.get("dx", 0)), py + STEP * float(goal.get("dy", 0))]))
        return (float(xy[0]), float(xy[1])), "move"
    if action == "region":
        centre = REGION_CENTRES.get(str(goal.get("region")))
        return None if centre is None else (centre, "region")
    if action in ("stop", "wait"):
        xy = stop_target(torch.tensor([[px, py]]), torch.tensor([[float(velocity[0]), float(velocity[1])]]), dt)[0]
        return (float(xy[0]), float(xy[1])), "stop"
    return None


class TableTask(VectorTask):
    name = "table"
    state_dim = 10
    action_dim = 2
    control_hz = 50.0
    max_steps = 320
    horizon = 50
    has_target_changes = True
    delay_hurts_solve_rate = False
    goal_conditioned = True  # the goal token is in the observation (benchmarks.goal_switch)

    def __init__(self, action_noise_std: float = 0.1, disturbances: bool = True, goal_changes: int = CHANGES) -> None:
        """``goal_changes``: how many times each episode's goal changes by itself (0: only
        :meth:`set_goal` changes it, as when a person drives the table)."""
        super().__init__(action_noise_std, disturbances)
        self.goal_changes_per_episode = int(goal_changes)

    # ------------------------------------------------------------------ episodes

    def _reset_state(self, num_envs: int) -> torch.Tensor:
        b = num_envs
        self._place_objects(b)
        p = self._uniform((b, 2), -1.0, 1.0) * torch.tensor([HALF_X - 0.1, HALF_Y - 0.1])
        v = torch.zeros(b, 2)
        target, kind = self._new_goal(p, v, initial=True)
        self._changes_left = torch.full((b,), self.goal_changes_per_episode, dtype=torch.long)
        self._next_change = torch.randint(FIRST_CHANGE[0], FIRST_CHANGE[1] + 1, (b,), generator=self.generator)
        self._age = torch.zeros(b, dtype=torch.long)  # ticks since the last goal change
        self._awaiting = torch.zeros(b, dtype=torch.bool)  # a change not yet responded to
        self._settled = torch.zeros(b, dtype=torch.long)  # consecutive ticks at rest at the goal
        self.reaction_samples: list[float] = []
        self.goal_changes = torch.zeros(b, dtype=torch.long)
        return torch.cat([p, v, goal_token(target, kind)], dim=1)

    def _place_objects(self, b: int) -> None:
        """3 or 4 objects per episode, distinct (colour, shape), spaced by rejection."""
        pairs = torch.rand(b, len(COLORS) * len(SHAPES), generator=self.generator).argsort(dim=1)[:, :4]
        self.object_color = pairs // len(SHAPES)  # [B, 4] indices into COLORS
        self.object_shape = pairs % len(SHAPES)  # [B, 4] indices into SHAPES
        self.object_present = torch.ones(b, 4, dtype=torch.bool)
        self.object_present[:, 3] = torch.rand(b, generator=self.generator) < 0.5
        limit = torch.tensor([HALF_X - MARGIN - 0.03, HALF_Y - MARGIN - 0.03])
        xy = torch.zeros(b, 4, 2)
        for i in range(4):
            cand = self._uniform((b, 32, 2), -1.0, 1.0) * limit
            if i:
                gap = (cand[:, :, None, :] - xy[:, None, :i, :]).norm(dim=3).min(dim=2).values
                ok = gap >= OBJECT_SPACING
                ok[:, -1] = True
                first = ok.float().argmax(dim=1)
            else:
                first = torch.zeros(b, dtype=torch.long)
            xy[:, i] = cand[torch.arange(b), first]
        self.object_xy = xy

    @property
    def objects(self) -> list[list[dict]]:
        """Per episode, the objects on the table: ``{"color", "shape", "x", "y"}`` dicts."""
        out = []
        for b in range(self.object_xy.shape[0]):
            out.append([{"color": COLORS[int(self.object_color[b, i])], "shape": SHAPES[int(self.object_shape[b, i])],
                         "x": float(self.object_xy[b, i, 0]), "y": float(self.object_xy[b, i, 1])}
                        for i in range(4) if bool(self.object_present[b, i])])
        return out

    def _new_goal(self, p: torch.Tensor, v: torch.Tensor, initial: bool = False,
                  index: torch.Tensor | None = None, current: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random goal (target [B, 2], kind [B]) for the episodes ``index`` (default all):
        the kind by ``KIND_WEIGHTS`` (no stop when ``initial``), then a candidate of that kind
        at least ``MIN_SWITCH_DISTANCE`` away and at least 90 degrees off the current motion
        (any kind's candidate if that kind has none; the farthest one if none qualifies)."""
        idx = torch.arange(p.shape[0]) if index is None else index
        b = idx.numel()
        objects = self.object_xy[idx]  # [b, 4, 2]
        regions = torch.tensor(list(REGION_CENTRES.values()))[None].expand(b, -1, -1)
        steps = torch.randint(-8, 9, (b, 6, 2), generator=self.generator).float()
        moves = clamp_to_table(p[:, None, :] + STEP * steps)
        stop = stop_target(p, v, self.dt)[:, None, :]
        cand = torch.cat([objects, moves, regions, stop], dim=1)  # [b, 4 + 6 + 9 + 1, 2]
        cand_kind = torch.tensor([0] * 4 + [1] * 6 + [2] * len(REGION_CENTRES) + [3])
        valid = torch.ones(b, cand.shape[1], dtype=torch.bool)
        valid[:, :4] = self.object_present[idx]
        rel = cand - p[:, None, :]
        dist = rel.norm(dim=2)
        speed = v.norm(dim=1, keepdim=True)
        cos = (rel * v[:, None, :]).sum(2) / (dist * speed).clamp(min=1e-6)
        sideways = (speed < 0.1) | (cos <= 0.0)
        good = valid & (dist >= MIN_SWITCH_DISTANCE) & sideways
        if current is not None:  # a change changes the goal
            good &= (cand - current[:, None, :]).norm(dim=2) > 0.1
        good[:, -1] = True  # stop is always acceptable, when it is the kind drawn
        weights = torch.tensor(KIND_WEIGHTS)
        if initial:
            weights = weights.clone()
            weights[3] = 0.0
        kind = torch.multinomial(weights.expand(b, -1), 1, generator=self.generator)[:, 0]
        score = torch.rand(b, cand.shape[1], generator=self.generator)  # a random pick among the good ones
        of_kind = good & (cand_kind[None] == kind[:, None])
        of_kind[:, -1] &= kind == 3
        fallback = good.clone()
        fallback[:, -1] = False
        none_of_kind = ~of_kind.any(dim=1)
        choice_mask = torch.where(none_of_kind[:, None], fallback, of_kind)
        none_good = ~choice_mask.any(dim=1)
        pick = torch.where(choice_mask, score, torch.full_like(score, -1.0)).argmax(dim=1)
        farthest = torch.where(valid & (cand_kind[None] < 3), dist, torch.full_like(dist, -1.0)).argmax(dim=1)
        pick = torch.where(none_good, farthest, pick)
        return cand[torch.arange(b), pick], cand_kind[pick]

    def _advance(self, commanded: torch.Tensor, executed: torch.Tensor, active: torch.Tensor) -> None:
        nxt = self._model_step(self.state, executed)
        p, v = nxt[:, 0:2], nxt[:, 2:4]
        target = nxt[:, 4:6]
        kind = nxt[:, 6:10].argmax(dim=1)
        age = self._age + 1

        # Heading for the new goal: moving, and within HEADING_ANGLE_DEG of the target's direction.
        rel = target - p
        speed = v.norm(dim=1)
        cos = (rel * v).sum(1) / (rel.norm(dim=1) * speed).clamp(min=1e-9)
        heading = (speed > HEADING_SPEED) & (cos >= math.cos(math.radians(HEADING_ANGLE_DEG)))
        responded = active & self._awaiting & heading
        self._record_reaction(responded, age)
        self.reaction_samples.extend(age[responded].float().tolist())
        awaiting = self._awaiting & ~responded

        at_goal = ((p - target).norm(dim=1) < GOAL_RADIUS) & (speed < SETTLE_SPEED)
        settled = torch.where(at_goal, self._settled + 1, torch.zeros_like(self._settled))
        solved = active & (settled >= SETTLE_TICKS) & (self._changes_left == 0)

        change = active & ~solved & (self._changes_left > 0) & (self.t + 1 >= self._next_change)
        if bool(change.any()):
            index = torch.nonzero(change).squeeze(1)
            new_target, new_kind = self._new_goal(p[index], v[index], index=index, current=target[index])
            target = target.clone()
            kind = kind.clone()
            target[index] = new_target
            kind[index] = new_kind
            gap = torch.randint(NEXT_CHANGE[0], NEXT_CHANGE[1] + 1, (self.num_envs,), generator=self.generator)
            self._next_change = torch.where(change, self.t + 1 + gap, self._next_change)
            self._changes_left = self._changes_left - change.long()
            awaiting = torch.where(change, kind != 3, awaiting)
            age = torch.where(change, torch.zeros_like(age), age)
            settled = torch.where(change, torch.zeros_like(settled), settled)
        nxt = torch.cat([p, v, goal_token(target, kind)], dim=1)

        self.state = torch.where(active[:, None], nxt, self.state)
        self._age = torch.where(active, age, self._age)
        self._settled = torch.where(active, settled, self._settled)
        self._awaiting = torch.where(active, awaiting, self._awaiting)
        self.events = self.events + change.long()
        self.goal_changes = self.goal_changes + change.long()
        self._solved = self._solved | solved

    def set_goal(self, target: torch.Tensor, kind: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Give episodes ``index`` (default all) a goal now (what a person saying it does):
        ``target`` [b, 2] m, ``kind`` [b] long into ``GOAL_KINDS``. Counts as a goal change
        (an event; the reaction to it is measured). Returns the new states."""
        idx = torch.arange(self.num_envs) if index is None else index
        state = self.state.clone()
        state[idx, 4:] = goal_token(target.to(torch.float32), kind.to(torch.long))
        self.state = state
        changed = torch.zeros(self.num_envs, dtype=torch.bool)
        changed[idx] = True
        self._awaiting = torch.where(changed, self.state[:, 6:10].argmax(1) != 3, self._awaiting)
        self._age = torch.where(changed, torch.zeros_like(self._age), self._age)
        self._settled = torch.where(changed, torch.zeros_like(self._settled), self._settled)
        self.events = self.events + changed.long()
        return self.state.clone()

    # ------------------------------------------------------------------ expert

    def _expert(self, state: torch.Tensor, mode: torch.Tensor | None) -> torch.Tensor:
        p, v, target = state[:, 0:2], state[:, 2:4], state[:, 4:6]
        error = target - p
        dist = error.norm(dim=1, keepdim=True)
        speed = torch.minimum(torch.full_like(dist, CRUISE), torch.minimum(torch.sqrt(2.0 * BRAKE * dist), GAIN_P * dist))
        v_star = error / dist.clamp(min=1e-9) * speed
        # Acceleration-limited: the velocity may change by at most ACCEL * dt per tick, and the
        # command is what makes the lagged velocity loop do exactly that change. A goal change
        # bends the path instead of stepping the command.
        change = v_star - v
        limit = ACCEL * self.dt
        change = change / (change.norm(dim=1, keepdim=True) / limit).clamp(min=1.0)
        command = (v + change * (TAU / self.dt)) / V_MAX
        norm = command.norm(dim=1, keepdim=True)
        return command / norm.clamp(min=1.0)
