"""Bidirectional decoding (BID; Liu et al. 2024, "Bidirectional Decoding: Improving
Action Chunking via Closed-Loop Resampling"), in the form the RTC reference evaluates
(``bid_k=None``): sample ``N`` candidate chunks per item and keep the one closest to the
previous chunk (the *backward coherence* criterion only; the forward-contrast term needs
a second, weaker policy and is off).

Distance: ``L_n = Σ_i W_i ||c_n,i - Y_i||²`` over the overlap with the previous chunk
``Y``, in the policy's normalised action space, with the same prefix weights ``W`` as RTC
(weight 1 on the ``d`` frozen actions, decaying to 0 at ``H - s``; ``chunking.soft_mask``).
Items without a previous chunk keep their first candidate (a plain sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from chunking.soft_mask import Schedule, prefix_weights

if TYPE_CHECKING:
    from policies.base import ChunkPolicy


@dataclass
class BIDConfig:
    """``n_samples``: candidates per item (16 in the RTC reference)."""

    n_samples: int = 16
    schedule: Schedule = "exp"


def select_coherent(
    candidates: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    has_prev: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick per item the candidate (``[B, N, H, A]``) minimising the weighted squared
    distance to ``target`` (``[B, H, A]``) with ``weights`` ``[B, H]``. Returns
    ``(chosen [B, H, A], index [B])``; index 0 where ``has_prev`` is False."""
    diff = (candidates - target[:, None]).pow(2).sum(-1)  # [B, N, H]
    loss = (diff * weights[:, None, :]).sum(-1)  # [B, N]
    index = torch.where(torch.as_tensor(has_prev, dtype=torch.bool), loss.argmin(dim=1), torch.zeros_like(loss[:, 0], dtype=torch.long))
    chosen = candidates[torch.arange(candidates.shape[0]), index]
    return chosen, index


def bid_chunk(
    policy: "ChunkPolicy",
    state: torch.Tensor,
    prev_chunk: torch.Tensor,
    has_prev: torch.Tensor,
    d: int | torch.Tensor,
    s: int | torch.Tensor,
    config: BIDConfig | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[B, H, A]`` chunks chosen among ``n_samples`` plain samples per item (one policy
    call of batch ``B * N``). ``prev_chunk`` is shifted to the request tick."""
    config = config or BIDConfig()
    batch, horizon, action_dim = prev_chunk.shape
    n = max(1, int(config.n_samples))
    states = state.repeat_interleave(n, dim=0)
    samples = policy.sample(states, num_steps=num_steps, generator=generator).reshape(batch, n, horizon, action_dim)
    weights = prefix_weights(horizon, d, s, config.schedule).expand(batch, horizon).to(samples.device)
    norm_samples = policy.normalize_actions(samples.reshape(batch * n, horizon, action_dim)).reshape(batch, n, horizon, action_dim)
    _, index = select_coherent(norm_samples, policy.normalize_actions(prev_chunk), weights, has_prev)
    return samples[torch.arange(batch), index]
