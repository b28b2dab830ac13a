"""RTI warm start (Duan, Yin, Kragic 2025, arXiv 2508.05396: Real-Time Iteration for
diffusion policies): instead of denoising from pure noise, start from the previous plan
shifted by the executed steps (its tail padded by repeating the last action), re-noised
to the level of the last few denoising steps, and run only those steps.

The re-noising and the partial schedule are the policy's business
(``policies.base.WarmStart``); this module decides *what* to start from and handles
batches that mix items with and without a previous plan (the latter get full sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from policies.base import WarmStart

if TYPE_CHECKING:
    from policies.base import ChunkPolicy


@dataclass
class RTIConfig:
    """``steps``: denoising steps run from the warm start; ``None`` = 40% of the policy's
    default number of steps, at least 1 (2 of 5 flow steps), which keeps a warm-started
    chunk under half the cost of a full one."""

    steps: int | None = None


def rti_steps(config: RTIConfig, num_steps: int) -> int:
    """The number of warm-start steps for a policy that samples with ``num_steps``."""
    if config.steps is not None:
        return max(1, min(int(config.steps), num_steps))
    return max(1, min(num_steps, int(0.4 * num_steps)))


def warm_start_chunk(
    policy: "ChunkPolicy",
    state: torch.Tensor,
    prev_chunk: torch.Tensor,
    has_prev: torch.Tensor,
    config: RTIConfig | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[B, H, A]`` chunks (robot units): items with ``has_prev`` start from
    ``prev_chunk`` (already shifted to the request tick, tail held; see
    ``chunking.merge.shift_chunk``) and run the last ``rti_steps`` steps; the others are
    sampled in full. Two policy calls at most (one per group)."""
    config = config or RTIConfig()
    has = torch.as_tensor(has_prev, dtype=torch.bool).reshape(-1)
    full_steps = num_steps if num_steps is not None else policy.config.num_steps
    steps = rti_steps(config, full_steps)
    if bool(has.all()):
        return policy.sample(state, warm_start=WarmStart(prev_chunk, steps), num_steps=num_steps, generator=generator)
    if not bool(has.any()):
        return policy.sample(state, num_steps=num_steps, generator=generator)
    out = torch.empty_like(prev_chunk)
    out[has] = policy.sample(state[has], warm_start=WarmStart(prev_chunk[has], steps), num_steps=num_steps, generator=generator)
    out[~has] = policy.sample(state[~has], num_steps=num_steps, generator=generator)
    return out
