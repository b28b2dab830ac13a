"""The batched real-time chunking call: one guided sampling call where every item has its
own previous chunk, ``d``, ``s`` and mask, with optional future-state rollout per item.

This is the entry point a server's engine calls (issue 4); the in-process strategies of
``chunking.strategies`` call it too. Conventions (see ``policies.base``): robot units in
and out, ``[B, ...]`` batches, ``d`` and ``s`` long tensors ``[B]`` (ints broadcast).

Chunk indexing. ``prev_chunk`` is the previous chunk shifted so that index 0 is the action
the robot executes at the *request tick* ``t`` (the tick of the observation ``state``);
``d[i]`` of its actions (``t .. t+d-1``) will still execute while the new chunk is being
computed. The returned chunk is indexed the same way (index 0 = tick ``t``), so the caller
switches to it at tick ``t + d`` by executing index ``d`` (``chunking.merge``).

* Plain RTC (``future_state_fn`` None): the policy sees ``s_t``; guidance inpaints the
  first ``d`` actions (weight 1) and follows the old chunk over the soft-masked overlap
  up to ``H - s`` (the paper's soft mask, ``chunking.soft_mask``).
* RTC + future state (VLASH): the policy sees ``ŝ_{t+d} = future_state_fn(s_t, pending,
  d)``, rolled through the ``d`` pending actions, so its chunk starts at tick ``t + d``.
  The guide target is the old chunk re-indexed to ``t + d`` (nothing there is frozen any
  more: those ``d`` actions are in the past of the new chunk), with the overlap ending
  where the old chunk's plan ends (``H - s - d`` after the shift). The returned chunk is
  ``[pending d actions, first H - d new actions]``: index ``d`` is the new chunk's first
  action, and the first ``d`` entries are exactly what the robot executes meanwhile.

Items with ``has_prev`` False (first request of a session) are sampled plainly from their
current state (zero guidance weight, no rollout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from chunking.future_state import FutureStateFn
from chunking.merge import shift_chunk
from chunking.rtc import RealTimeChunkingGuide, RTCConfig
from chunking.soft_mask import Schedule, prefix_weights

if TYPE_CHECKING:
    from policies.base import ChunkPolicy


@dataclass
class RealtimeConfig:
    """``beta``: max guidance weight (5 for H≈8 and 5 flow steps, as the Kinetix
    reference); ``schedule``: soft-mask schedule (``"zeros"`` = hard masking)."""

    beta: float = 5.0
    schedule: Schedule = "exp"


def _per_item_long(value: int | torch.Tensor, batch: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.long)
    if tensor.dim() == 0:
        tensor = tensor.expand(batch).clone()
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must be an int or a long tensor [B={batch}], got shape {tuple(tensor.shape)}")
    return tensor


def realtime_chunk(
    policy: "ChunkPolicy",
    state: torch.Tensor,
    prev_chunk: torch.Tensor,
    has_prev: torch.Tensor,
    d: int | torch.Tensor,
    s: int | torch.Tensor,
    config: RealtimeConfig | None = None,
    future_state_fn: FutureStateFn | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``[B, H, A]`` chunks (robot units, index 0 = request tick) with per-item RTC.

    Args:
        policy: a ``ChunkPolicy`` (flow or diffusion); it calls the guide once per step.
        state: ``[B, S]`` observations at the request tick.
        prev_chunk: ``[B, H, A]`` previous chunks shifted to the request tick (any values
            where ``has_prev`` is False).
        has_prev: ``[B]`` bool; False items are sampled without guidance.
        d: inference delay in ticks per item (``0 <= d``; clamped to ``H - s`` in the mask).
        s: execution horizon per item (``1 <= s <= H``; RTC requires ``d <= s <= H - d``).
        config: guidance weight and schedule.
        future_state_fn: if given, condition on the state rolled through the pending
            actions (see the module docstring); ``None`` for plain RTC.
        num_steps: denoising steps (policy default if None).
        generator: noise generator for reproducibility.

    Raises ``ValueError`` on shape mismatches or negative ``d``/non-positive ``s``.
    """
    config = config or RealtimeConfig()
    batch, horizon, _ = prev_chunk.shape
    if state.shape[0] != batch:
        raise ValueError(f"state has {state.shape[0]} items, prev_chunk has {batch}")
    d_t = _per_item_long(d, batch, "d")
    s_t = _per_item_long(s, batch, "s")
    has = torch.as_tensor(has_prev, dtype=torch.bool).reshape(-1)
    if has.shape != (batch,):
        raise ValueError(f"has_prev must be [B={batch}]")
    if (d_t < 0).any() or (s_t < 1).any() or (s_t > horizon).any():
        raise ValueError(f"need d >= 0 and 1 <= s <= H={horizon}; got d={d_t.tolist()} s={s_t.tolist()}")
    rtc = RTCConfig(beta=config.beta, schedule=config.schedule)

    if future_state_fn is None:
        guide = RealTimeChunkingGuide.for_policy(policy, prev_chunk, has, d_t, s_t, rtc)
        return policy.sample(state, guide=guide, num_steps=num_steps, generator=generator)

    # Future-state-aware: roll each item through its own pending actions (n = d, or 0).
    n = torch.where(has, d_t.clamp(max=horizon), torch.zeros_like(d_t))
    pending = prev_chunk[:, : max(int(n.max().item()), 0)]
    future = future_state_fn(state, pending, n) if pending.shape[1] > 0 else state
    # The old plan re-indexed to tick t + d.
    target = torch.from_numpy(shift_chunk(prev_chunk.detach().cpu().numpy(), n.numpy(), fill="zero")).to(prev_chunk.device)
    # Nothing is frozen at t + d; the old plan ends H - s - d after the shift (s' = s + d).
    weights = prefix_weights(horizon, torch.zeros_like(d_t), (s_t + n).clamp(max=horizon), config.schedule)
    weights = weights * has[:, None].to(weights.dtype)
    guide = RealTimeChunkingGuide(policy.normalize_actions(target), weights.to(target.device), config.beta)
    new = policy.sample(future, guide=guide, num_steps=num_steps, generator=generator)
    # Re-index to the request tick: [pending n actions, new actions up to H - n].
    i = torch.arange(horizon, device=new.device)[None, :]
    idx = (i - n[:, None].to(new.device)).clamp(min=0)
    shifted_new = torch.gather(new, 1, idx[..., None].expand(-1, -1, new.shape[2]))
    return torch.where((i < n[:, None].to(new.device))[..., None], prev_chunk.to(new.dtype), shifted_new)
