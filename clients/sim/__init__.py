"""Simulated dynamic robot tasks, vectorised over episodes (torch on the CPU).

``TASKS`` maps a task name to its class; ``make_task(name)`` builds one. Every task
implements :class:`clients.sim.base.VectorTask`; :class:`clients.sim.gym_env.SingleEpisodeEnv`
wraps one as a gymnasium-style single-episode environment.
"""

from __future__ import annotations

from .balance import BalanceTask
from .base import VectorTask
from .catch import CatchTask
from .slalom import SlalomTask
from .table import TableTask
from .whack import WhackTask

TASKS: dict[str, type[VectorTask]] = {
    cls.name: cls for cls in (BalanceTask, WhackTask, SlalomTask, CatchTask, TableTask)
}


def make_task(name: str, **kwargs) -> VectorTask:
    """A fresh task by name (kwargs: ``action_noise_std``, ``disturbances``)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
    return cls(**kwargs)


__all__ = ["TASKS", "VectorTask", "make_task"]
