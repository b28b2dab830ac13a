"""What flow and diffusion policies share: the network, the normalisation statistics, and
being plug-ins (``policies.base``): a spec, ``encode``, and Headway's sampling loops."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from models.action_net import ActionChunkNet, ActionNetConfig

from .base import PolicyConfig, PolicySpec, VectorInput
from .sampling import PluginSampler

# Normalised actions are clipped to this many standard deviations after sampling: the
# demonstrations never leave it, and a guided step must not push a chunk to infinity.
ACTION_CLIP_STD = 5.0


def spec_of(config: PolicyConfig) -> PolicySpec:
    """The plug-in spec of a policy built from ``config``: the observation is ``state`` alone,
    which future state rolls forward."""
    return PolicySpec(family=config.family, horizon=config.horizon, action_dim=config.action_dim,
                      control_hz=config.control_hz, inputs={"state": VectorInput(config.state_dim)},
                      state_keys=("state",), num_steps=config.num_steps, action_clip=ACTION_CLIP_STD)


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

    @property
    def spec(self) -> PolicySpec:
        return spec_of(self.config)

    def encode(self, observation: dict) -> torch.Tensor:
        """The normalised state ``[B, S]``: the network's conditioning."""
        return self.normalize_state(self._check_state(observation["state"]))

    @cached_property
    def _sampler(self) -> PluginSampler:
        return PluginSampler(self)

    def _check_state(self, state: torch.Tensor) -> torch.Tensor:
        state = torch.as_tensor(state, dtype=torch.float32)
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(f"state must be [B, {self.config.state_dim}], got {tuple(state.shape)}")
        return state

    def training_loss(self, state: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Behaviour-cloning loss for normalised ``state`` [B, S] and normalised target chunks [B, H, A]."""
        raise NotImplementedError  # pragma: no cover - each family defines its objective
