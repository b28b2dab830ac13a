"""Chunk bookkeeping in control ticks: shift a chunk by executed ticks, merge an arriving one.

Every chunk carries the tick at which its index 0 applies (its *start tick*). The action
executed at tick ``k`` from a chunk that starts at ``t0`` is ``chunk[k - t0]``. Merging
therefore never consults a delay *estimate*: it uses the start tick the producer stated
and the tick the robot is at, so a mis-estimated delay (e.g. a slow warm-up call) can
not make the robot skip or repeat actions (the LeRobot bug of the prior-art notes, §6.7).
"""

from __future__ import annotations

from typing import Literal

import torch

Fill = Literal["last", "zero"]


def _ticks(value: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.long, device=device)
    return tensor.expand(batch) if tensor.dim() == 0 else tensor


def shift_chunk(chunk: torch.Tensor, k: int | torch.Tensor, fill: Fill = "last") -> torch.Tensor:
    """``out[:, i] = chunk[:, i + k]`` per item (``k`` int or long ``[B]``, ``k >= 0``).

    Positions past the end of ``chunk`` are filled with its last action (``"last"``, the
    RTI-DP convention: a plan that runs out holds) or zeros (``"zero"``, the RTC reference
    convention for the previous chunk ``Y``; those positions carry zero weight anyway).
    Raises ``ValueError`` on a negative shift.
    """
    batch, horizon = chunk.shape[:2]
    k_t = _ticks(k, batch, chunk.device)
    if (k_t < 0).any():
        raise ValueError("shift_chunk: shifts must be >= 0 (a chunk cannot be shifted into the past)")
    index = torch.arange(horizon, device=chunk.device)[None, :] + k_t[:, None]  # [B, H]
    past_end = index >= horizon
    gathered = torch.gather(chunk, 1, index.clamp(max=horizon - 1)[..., None].expand(-1, -1, chunk.shape[2]))
    if fill == "zero":
        gathered = torch.where(past_end[..., None], torch.zeros_like(gathered), gathered)
    elif fill != "last":
        raise ValueError(f"unknown fill {fill!r}")
    return gathered


def remaining_actions(start_tick: torch.Tensor, now: torch.Tensor, horizon: int) -> torch.Tensor:
    """How many actions of a chunk starting at ``start_tick`` remain from tick ``now`` on
    (``H - (now - start)``, clamped to ``[0, H]``)."""
    return (horizon - (now - start_tick)).clamp(0, horizon)


def merge_arriving_chunk(
    current: torch.Tensor,
    current_start: torch.Tensor,
    arriving: torch.Tensor,
    arriving_start: torch.Tensor,
    now: int | torch.Tensor,
    fill: Fill = "last",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge a chunk that arrives at tick ``now`` into the one being executed.

    ``current``/``arriving``: ``[B, H, A]`` with start ticks ``[B]`` (long). The arriving
    chunk takes over from tick ``now`` when it still has actions for ``now`` and is not
    older than the current one; otherwise (a stale reply whose actions all lie in the
    past) the current chunk stays. Returns ``(buffer, start, took)``: the buffer is
    re-indexed so that index 0 is the action for tick ``now`` (so its start is ``now``),
    and ``took`` ``[B]`` says which items switched.
    """
    batch, horizon = current.shape[:2]
    now_t = _ticks(now, batch, current.device)
    current_start = _ticks(current_start, batch, current.device)
    arriving_start = _ticks(arriving_start, batch, current.device)
    if (arriving_start > now_t).any() or (current_start > now_t).any():
        raise ValueError("merge_arriving_chunk: a chunk may not start after the tick it is merged at")
    took = (remaining_actions(arriving_start, now_t, horizon) > 0) & (arriving_start >= current_start)
    from_arriving = shift_chunk(arriving, now_t - arriving_start, fill)
    from_current = shift_chunk(current, (now_t - current_start).clamp(max=horizon - 1), fill)
    buffer = torch.where(took[:, None, None], from_arriving, from_current)
    return buffer, now_t.clone(), took
