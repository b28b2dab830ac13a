"""Future-state-aware rollout (VLASH, Tang et al. 2025, arXiv 2512.01031, §3).

While a chunk is being computed the robot keeps executing the actions still pending from
the previous chunk: at the request tick ``t`` those are ``a_t ... a_{t+d-1}``. Conditioning
the policy on ``s_t`` therefore produces a plan for a state the robot has already left.
VLASH conditions instead on the state at the tick the new chunk starts,
``ŝ_{t+d} = f(s_t, a_t, ..., a_{t+d-1})``, obtained by rolling the current state forward
through the pending actions with a model of the dynamics supplied by the caller (a
per-task dynamics function; for position-controlled arms, the last commanded position).

A *future-state function* has the signature
``future_state_fn(state [B, S], pending [B, P, A], n [B] long) -> state [B, S]``:
roll each item ``i`` forward through its first ``n[i]`` pending actions (``n[i] <= P``;
``n[i] = 0`` returns the item's state unchanged). Everything is in robot units.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

FutureStateFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rollout_pending(state: torch.Tensor, pending: torch.Tensor, n: torch.Tensor, step: StepFn) -> torch.Tensor:
    """Roll ``state`` ([B, S]) through the first ``n[i]`` actions of ``pending`` ([B, P, A])
    with the one-tick model ``step(state [B, S], action [B, A]) -> [B, S]``.

    Items stop at their own ``n[i]`` (items that are done keep their state while the
    others continue), so a batch may mix pending lengths. Raises ``ValueError`` if some
    ``n[i]`` exceeds the number of pending actions supplied.
    """
    n = torch.as_tensor(n, dtype=torch.long, device=state.device).reshape(-1)
    if n.shape[0] != state.shape[0]:
        raise ValueError(f"n has {n.shape[0]} items, state has {state.shape[0]}")
    if (n < 0).any() or (n > pending.shape[1]).any():
        raise ValueError(f"pending lengths must lie in [0, {pending.shape[1]}], got {n.tolist()}")
    out = state
    for k in range(int(n.max().item()) if n.numel() else 0):
        stepped = step(out, pending[:, k])
        out = torch.where((k < n)[:, None], stepped, out)
    return out


def rollout_with(step: StepFn) -> FutureStateFn:
    """A future-state function from a one-tick dynamics model (see :func:`rollout_pending`)."""

    def future_state_fn(state: torch.Tensor, pending: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return rollout_pending(state, pending, n, step)

    return future_state_fn


def last_commanded_position(state_index: Sequence[int], action_index: Sequence[int] | None = None) -> FutureStateFn:
    """VLASH's proxy for position-controlled robots with absolute position actions: the
    state entries ``state_index`` become the last pending commanded position
    ``pending[n-1, action_index]`` (the robot will have been commanded there by the time
    the new chunk starts). Items with ``n = 0`` keep their state. Only valid when actions
    are absolute positions of the same quantities the state reports.
    """
    s_idx = torch.as_tensor(list(state_index), dtype=torch.long)
    a_idx = torch.as_tensor(list(action_index) if action_index is not None else list(state_index), dtype=torch.long)
    if s_idx.shape != a_idx.shape:
        raise ValueError("state_index and action_index must have the same length")

    def future_state_fn(state: torch.Tensor, pending: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(n, dtype=torch.long, device=state.device).reshape(-1)
        last = pending[torch.arange(state.shape[0], device=state.device), (n - 1).clamp(min=0)]
        out = state.clone()
        out[:, s_idx] = torch.where((n > 0)[:, None], last[:, a_idx].to(state.dtype), state[:, s_idx])
        return out

    return future_state_fn
