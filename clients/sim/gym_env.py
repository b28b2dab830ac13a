"""A gymnasium-style single-episode view of a vectorised task (no gymnasium dependency).

``SingleEpisodeEnv(task)`` follows gymnasium's ``Env`` calling convention:
``reset(seed=None) -> (obs, info)`` and ``step(action) -> (obs, reward, terminated,
truncated, info)``, with numpy float32 observations ``[S]`` and actions ``[A]`` in the
task's normalised units. Reward is sparse: 1.0 on the tick the task is solved, else 0.
``terminated`` is success or failure, ``truncated`` running out of ``max_steps``.
Calling ``step`` after the episode ended raises RuntimeError (reset first).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import make_task
from .base import VectorTask


class SingleEpisodeEnv:
    """One episode at a time of ``task`` (a name or a VectorTask instance)."""

    def __init__(self, task: str | VectorTask, **task_kwargs) -> None:
        self.task = make_task(task, **task_kwargs) if isinstance(task, str) else task
        self.observation_shape = (self.task.state_dim,)
        self.action_shape = (self.task.action_dim,)
        self.action_low, self.action_high = -1.0, 1.0
        self.metadata = {"render_fps": self.task.control_hz}
        self._generator = torch.Generator().manual_seed(0)
        self._started = False

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start a new episode; ``seed`` reseeds, otherwise episodes continue the stream."""
        if seed is not None:
            self._generator = torch.Generator().manual_seed(int(seed))
        obs = self.task.reset(1, self._generator)
        self._started = True
        return obs[0].numpy().astype(np.float32), {"expert_action": self.task.expert_action()[0].numpy()}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self._started or bool(self.task.done()[0]):
            raise RuntimeError("episode is over or not started; call reset()")
        a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(1, self.task.action_dim)
        obs = self.task.step(a)[0]
        solved = bool(self.task.solved()[0])
        failed = bool(self.task.failed()[0])
        terminated = solved or failed
        truncated = not terminated and bool(self.task.done()[0])
        reaction = float(self.task.reaction_ticks()[0])
        info = {
            "solved": solved,
            "failed": failed,
            "tick": int(self.task.t[0]),
            "reaction_ticks": None if math.isnan(reaction) else reaction,
            "expert_action": self.task.expert_action()[0].numpy(),
        }
        return obs.numpy().astype(np.float32), 1.0 if solved else 0.0, terminated, truncated, info
