"""Expert demonstrations for behaviour cloning of action-chunk policies.

States come from noisy rollouts of the scripted expert (DART-style noise injection: the
action noise is 1-3x the task's, and part of the rollouts run the expert in naive chunked
mode with delay, so the data also covers the states that delayed execution visits). The
label for a state is the chunk-level expert from it (:meth:`VectorTask.expert_chunk`: the
next H actions the expert plans through the noise-free model, with the episode's hidden
mode), so labels never contain reactions to events that were not yet observable.

VLASH training option (``future_offset_max`` K > 0): each sample draws an offset
delta ~ U{0..K}; the target is the label at tick t + delta and the conditioning state is
the state at t rolled forward through the actions actually commanded at t .. t+delta-1
(:meth:`VectorTask.predict_state`), i.e. the future-state estimate a delayed controller
would feed the policy, with its real errors (action noise, unforeseen events).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import VectorTask


@dataclass
class Demonstrations:
    """``states`` [N, S] robot units (the conditioning input); ``chunks`` [N, H, A]
    normalised task actions (the targets); ``offsets`` [N] long (VLASH delta, 0 without)."""

    states: torch.Tensor
    chunks: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return int(self.states.shape[0])


# (share of the episodes, noise multiplier, naive-chunked delay d or 0 for closed loop)
ROLLOUT_MIX: tuple[tuple[float, float, int], ...] = (
    (0.3, 1.0, 0),
    (0.25, 2.0, 0),
    (0.15, 3.0, 0),
    (0.15, 1.0, 2),
    (0.15, 1.0, 4),
)


def _rollout(task: VectorTask, episodes: int, d: int, generator: torch.Generator):
    """One batch of rollouts; returns per-tick states, commanded actions, labels, active masks."""
    task.reset(episodes, generator)
    states, actions, labels, active = [], [], [], []
    pending: torch.Tensor | None = None
    t = 0
    while not bool(task.done().all()) and t < task.max_steps:
        obs = task.observe()
        label = task.expert_chunk(obs)
        if d == 0:
            act = label[:, 0]
        else:
            # Naive chunked execution with s = d: a chunk planned from the state at the
            # start of a cycle is executed from index d, d ticks later.
            if pending is None:
                pending = label
            if t % d == 0:
                nxt = label[:, d : 2 * d]
                queue = pending[:, :d]
                pending = nxt
                cycle_queue = queue
            act = cycle_queue[:, t % d]
        states.append(obs)
        actions.append(act)
        labels.append(label)
        active.append(~task.done())
        task.step(act)
        t += 1
    return torch.stack(states), torch.stack(actions), torch.stack(labels), torch.stack(active)


def collect_demonstrations(
    task: VectorTask, episodes: int, future_offset_max: int = 0, seed: int = 0
) -> Demonstrations:
    """Roll out the expert on ``episodes`` episodes (mix ``ROLLOUT_MIX``) and return the
    (state, chunk) pairs of every tick at which an episode was still running."""
    if episodes < len(ROLLOUT_MIX):
        raise ValueError(f"need at least {len(ROLLOUT_MIX)} episodes")
    if future_offset_max < 0 or future_offset_max >= task.horizon:
        raise ValueError("future_offset_max must lie in [0, H)")
    base_noise = task.action_noise_std
    generator = torch.Generator().manual_seed(seed)
    # Offsets draw from their own stream, so episodes do not depend on future_offset_max.
    offset_generator = torch.Generator().manual_seed(seed + 1)
    out_states, out_chunks, out_offsets = [], [], []
    try:
        for share, noise_mult, d in ROLLOUT_MIX:
            n = max(1, int(round(share * episodes)))
            task.action_noise_std = base_noise * noise_mult
            states, actions, labels, active = _rollout(task, n, d, generator)
            t_len = states.shape[0]
            k = future_offset_max
            delta = torch.randint(0, k + 1, (t_len, n), generator=offset_generator) if k else torch.zeros(t_len, n, dtype=torch.long)
            t_idx = torch.arange(t_len)[:, None].expand(t_len, n)
            target_t = (t_idx + delta).clamp(max=t_len - 1)
            b_idx = torch.arange(n)[None, :].expand(t_len, n)
            valid = active & (t_idx + delta < t_len) & active[target_t, b_idx]
            if k:
                # pending[t, b, j] = action commanded at t + j (zero past the end; masked by delta)
                padded = torch.cat([actions, torch.zeros(k, n, actions.shape[2])], dim=0)
                pending = torch.stack([padded[j : j + t_len] for j in range(k)], dim=2)
                cond = task.predict_state(
                    states.reshape(t_len * n, -1),
                    pending.reshape(t_len * n, k, -1),
                    delta.reshape(-1),
                ).reshape(t_len, n, -1)
            else:
                cond = states
            target = labels[target_t, b_idx]
            out_states.append(cond[valid])
            out_chunks.append(target[valid])
            out_offsets.append(delta[valid])
    finally:
        task.action_noise_std = base_noise
    return Demonstrations(torch.cat(out_states), torch.cat(out_chunks), torch.cat(out_offsets))
