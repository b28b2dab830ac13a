"""Temporal ensembling (ACT; Zhao et al. 2023, "Learning Fine-Grained Bimanual
Manipulation with Low-Cost Hardware", §3.3): every chunk that has a prediction for the
current tick votes, weighted ``w_j = exp(-m * j)`` with ``j = 0`` for the *oldest* chunk
(ACT's convention: older predictions weigh more for ``m > 0``; ACT uses ``m = 0.01``).

Under inference delay a chunk requested at tick ``t`` only joins the vote when it
arrives at ``t + d``; its entry for tick ``k`` is ``chunk[k - t]``. PI's RTC blog reports
that averaging multimodal predictions under delay can produce motions no chunk planned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EnsembleConfig:
    """``m``: ACT's exponential weight rate (0.01 in ACT)."""

    m: float = 0.01


class TemporalEnsemble:
    """The chunks that still cover future ticks, with their start ticks (lockstep batch:
    one start tick for all items). ``add`` a chunk when it arrives; ``action(k)`` votes."""

    def __init__(self, config: EnsembleConfig | None = None) -> None:
        self.config = config or EnsembleConfig()
        self.chunks: list[tuple[int, torch.Tensor]] = []

    def reset(self) -> None:
        self.chunks.clear()

    def add(self, chunk: torch.Tensor, start_tick: int) -> None:
        """Register ``chunk`` ([B, H, A]) whose index 0 applies at ``start_tick``."""
        self.chunks.append((int(start_tick), chunk))

    def action(self, tick: int) -> torch.Tensor:
        """``[B, A]`` weighted mean of every chunk's entry for ``tick``; chunks that no
        longer cover ``tick`` are dropped. Raises ``LookupError`` if none covers it."""
        self.chunks = [(t0, c) for t0, c in self.chunks if tick - t0 < c.shape[1]]
        votes = [(t0, c) for t0, c in self.chunks if 0 <= tick - t0]
        if not votes:
            raise LookupError(f"no chunk covers tick {tick}")
        total, norm = None, 0.0
        for j, (t0, chunk) in enumerate(votes):  # oldest first
            w = float(torch.exp(torch.tensor(-self.config.m * j)))
            term = w * chunk[:, tick - t0]
            total = term if total is None else total + term
            norm += w
        return total / norm
