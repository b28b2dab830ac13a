"""What flow and diffusion policies share: the network and the normalisation statistics."""

from __future__ import annotations

import torch
from torch import nn

from models.action_net import ActionChunkNet, ActionNetConfig

from .base import PolicyConfig

# Normalised actions are clipped to this many standard deviations after sampling: the
# demonstrations never leave it, and a guided step must not push a chunk to infinity.
ACTION_CLIP_STD = 5.0


class NormalizedChunkPolicy(nn.Module):
    """Base of the chunk policies: owns the ActionChunkNet and the normalisation statistics.

    ``state`` and chunks cross the public API in robot units; inside, the network sees
    ``(x - mean) / std`` for both. Statistics are buffers, so ``state_dict`` holds them too.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.net = ActionChunkNet(
            ActionNetConfig(
                horizon=config.horizon,
                action_dim=config.action_dim,
                state_dim=config.state_dim,
                hidden=config.hidden,
                blocks=int(config.extra.get("blocks", 2)),
            )
        )
        self.register_buffer("state_mean", torch.tensor(config.state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(config.state_std, dtype=torch.float32))
        self.register_buffer("action_mean", torch.tensor(config.action_mean, dtype=torch.float32))
        self.register_buffer("action_std", torch.tensor(config.action_std, dtype=torch.float32))
        self.eval()

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state.to(torch.float32) - self.state_mean) / self.state_std

    def _check_state(self, state: torch.Tensor) -> torch.Tensor:
        state = torch.as_tensor(state, dtype=torch.float32)
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(f"state must be [B, {self.config.state_dim}], got {tuple(state.shape)}")
        return state

    def _noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        return torch.randn((batch, c.horizon, c.action_dim), generator=generator)

    def training_loss(self, state: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Behaviour-cloning loss for normalised ``state`` [B, S] and normalised target chunks [B, H, A]."""
        raise NotImplementedError  # pragma: no cover - each family defines its objective
