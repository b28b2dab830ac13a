"""Soft prefix masks for real-time chunking (RTC paper, Black et al. 2025, soft masking;
``get_prefix_weights`` in the Kinetix reference).

A new chunk is sampled while the previous one still executes. Index ``i`` of the new
chunk (index 0 = the tick at which the request was made) relates to the previous chunk
``Y`` (shifted so that its index 0 is that same tick) in three regions:

* ``i < d``: frozen. These actions execute from the old chunk while inference runs, so
  the new chunk must agree with them: ``W_i = 1``.
* ``d <= i < H - s``: overlap. The old chunk has a plan here, which the new chunk should
  follow more loosely the further it looks ahead: ``W_i`` decays from ~1 towards 0.
* ``i >= H - s``: the old chunk has nothing here (it was shifted by ``s``): ``W_i = 0``.

With ``c_i = (H - s - i) / (H - s - d + 1)`` in the overlap, the schedules are

* ``"linear"``: ``W_i = c_i``
* ``"exp"`` (the paper's default): ``W_i = c_i * (e^{c_i} - 1) / (e - 1)``
* ``"ones"``: ``W_i = 1`` up to ``H - s`` (guide towards the whole overlap)
* ``"zeros"``: ``W_i = 0`` in the overlap, i.e. hard masking of the frozen prefix only.

As in the reference implementation, a delay past the overlap (``d > H - s``) is clamped
down to ``H - s``: there is no previous action to freeze beyond the end of the old chunk.

Naming trap: LeRobot's ``RTCConfig.execution_horizon`` is *this* ``H - s`` (the end of the
soft-masked region), not the paper's execution horizon ``s``. Here ``s`` is always the
paper's: the number of actions executed per inference cycle.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["exp", "linear", "ones", "zeros"]
SCHEDULES: tuple[str, ...] = ("exp", "linear", "ones", "zeros")


def _as_batch(value: int | torch.Tensor, batch: int | None) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.long)
    if tensor.dim() == 0:
        tensor = tensor.expand(batch if batch is not None else 1)
    return tensor


def prefix_weights(
    horizon: int,
    d: int | torch.Tensor,
    s: int | torch.Tensor,
    schedule: Schedule = "exp",
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-item prefix weights ``W`` of shape ``[B, H]``.

    ``d`` (inference delay in ticks) and ``s`` (execution horizon) are ints or long
    tensors of shape ``[B]``; ints broadcast. The overlap ends at ``H - s`` (clamped to
    ``[0, H]``) and ``d`` is clamped to ``[0, H - s]`` as the reference does.

    Raises ``ValueError`` for an unknown schedule or mismatched batch sizes.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown prefix schedule {schedule!r}; expected one of {SCHEDULES}")
    d_t = torch.as_tensor(d, dtype=torch.long)
    s_t = torch.as_tensor(s, dtype=torch.long)
    batch = max(d_t.numel() if d_t.dim() else 1, s_t.numel() if s_t.dim() else 1)
    d_t, s_t = _as_batch(d_t, batch), _as_batch(s_t, batch)
    if d_t.shape != s_t.shape:
        raise ValueError(f"d and s must have the same batch size, got {tuple(d_t.shape)} and {tuple(s_t.shape)}")

    end = (horizon - s_t).clamp(0, horizon)[:, None]  # H - s: end of the overlap
    start = torch.minimum(d_t.clamp(min=0)[:, None], end)  # d, clamped to the overlap's end
    i = torch.arange(horizon, dtype=torch.long)[None, :]

    if schedule == "ones":
        w = torch.ones(start.shape[0], horizon, dtype=dtype)
    elif schedule == "zeros":
        w = (i < start).to(dtype)
    else:
        # c_i = (H - s - i) / (H - s - d + 1); >= 1 before d (clipped to 1), <= 0 from H - s.
        c = ((end - i).to(dtype) / (end - start + 1).to(dtype)).clamp(0.0, 1.0)
        w = c if schedule == "linear" else c * torch.expm1(c) / (math.e - 1.0)
        w = torch.where(i < start, torch.ones_like(w), w)
    return torch.where(i >= end, torch.zeros_like(w), w)
