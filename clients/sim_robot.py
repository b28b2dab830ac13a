"""``SimRobot``: one simulated task episode after another, driven as a ``Robot`` by ``RobotLoop``.

The simulation advances one control tick per ``apply`` (its physics runs on the robot's own
ticks, whatever the wall clock does), so a robot that holds while waiting for a chunk loses
time to a moving world exactly as a real one would. When an episode ends the next one starts
at once and ``take_episode_boundary()`` says so, once, so the loop drops the old plan.
"""

from __future__ import annotations

import numpy as np
import torch

from clients.sim import make_task


class SimRobot:
    """A ``Robot`` over a single episode (batch of 1) of the task ``task``.

    Counters: ``episodes`` (finished), ``solved``; ``solve_rate`` is their ratio (None before any).
    """

    def __init__(self, task: str, seed: int = 0, **task_kwargs) -> None:
        self.task = make_task(task, **task_kwargs)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = self.task.reset(1, self.generator)
        self.episodes = 0
        self.solved = 0
        self._boundary = False
        # Reaction times to goal/target changes (ticks), over every episode, for tasks that
        # keep each one (the table's ``reaction_samples``).
        self.reaction_ticks: list[float] = []
        self._reactions_seen = 0

    @property
    def solve_rate(self) -> float | None:
        return self.solved / self.episodes if self.episodes else None

    def observe(self) -> dict[str, np.ndarray]:
        return {"state": self.state[0].numpy().astype(np.float32)}

    def hold_action(self, last: np.ndarray | None = None) -> np.ndarray:
        """What the robot does with no plan: the task's stand-still action."""
        return self.task.hold_action()[0].numpy()

    def apply(self, action: np.ndarray) -> None:
        self.state = self.task.step(torch.tensor(np.asarray(action, dtype=np.float32))[None])
        samples = getattr(self.task, "reaction_samples", None)
        if samples is not None and len(samples) > self._reactions_seen:
            self.reaction_ticks.extend(samples[self._reactions_seen:])
            self._reactions_seen = len(samples)
        if bool(self.task.done()[0]):
            self.episodes += 1
            self.solved += int(bool(self.task.solved()[0]))
            self.state = self.task.reset(1, self.generator)
            self._reactions_seen = 0
            self._boundary = True

    def take_episode_boundary(self) -> bool:
        boundary, self._boundary = self._boundary, False
        return boundary
