"""Noise-free one-tick models of the simulated tasks: the dynamics future-state rollout needs.

The simulator (``clients.sim``) advances its episodes with them (adding the action noise and
the events only it knows), and the server rolls a robot's state forward through its pending
actions with them (VLASH, ``chunking.future_state``): one implementation for both. A model
is ``step(state [B, S], action [B, A], dt) -> [B, S]``: pure torch, states in robot units,
actions normalised.
"""

from __future__ import annotations

from typing import Callable

import torch

from chunking.dynamics import balance, catch, slalom, table, whack
from chunking.future_state import FutureStateFn, rollout_with

OneTickModel = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

ONE_TICK_MODELS: dict[str, OneTickModel] = {
    "balance": balance.step,
    "catch": catch.step,
    "slalom": slalom.step,
    "table": table.step,
    "whack": whack.step,
}


def one_tick_model(task: str) -> OneTickModel:
    """The model of ``task``; raises ``KeyError`` naming the known tasks."""
    try:
        return ONE_TICK_MODELS[task]
    except KeyError:
        raise KeyError(f"no one-tick model for task {task!r}; known: {sorted(ONE_TICK_MODELS)}") from None


def future_state_fn(task: str, control_hz: float) -> FutureStateFn:
    """Future-state rollout (``chunking.future_state``) through ``task``'s model at
    ``control_hz``: pending actions are clipped to [-1, 1], as the simulator clips every
    command. Noise-free and event-free: neither is known at prediction time. Raises
    ``KeyError`` for a task without a model."""
    step = one_tick_model(task)
    dt = 1.0 / control_hz
    return rollout_with(lambda state, action: step(state, action.clamp(-1.0, 1.0), dt))
