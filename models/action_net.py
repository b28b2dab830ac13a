"""ActionChunkNet: the small network behind the flow-matching and diffusion chunk policies.

``forward(x [B, H, A], tau [B], state [B, S]) -> [B, H, A]``: ``x`` is a (noisy) chunk in
normalised action units, ``tau`` a float in [0, 1] that says how far along denoising ``x``
is (flow time for flow policies, t / num_train_timesteps for diffusion policies: the
policy says which convention it feeds), ``state`` the normalised robot state. The output
is what the policy trains it to predict (a velocity, or a noise).

Architecture: an MLP over the flattened chunk with FiLM conditioning on a sinusoidal
embedding of ``tau`` and on the state, as in the small MLP / MLP-Mixer policies of the RTC
Kinetix reference. With H*A <= 32 and hidden 256 it has about 0.4M parameters, so a
batch-16 forward and backward takes about a millisecond on one CPU core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ActionNetConfig:
    horizon: int  # H
    action_dim: int  # A
    state_dim: int  # S
    hidden: int = 256
    blocks: int = 2
    time_dim: int = 64
    cond_dim: int = 128


def time_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of tau in [0, 1] (frequencies 1 .. 1000, log-spaced)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=tau.device, dtype=tau.dtype))
    angles = tau[:, None] * freqs[None, :] * math.pi
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class _FiLMBlock(nn.Module):
    """Pre-norm residual MLP block whose normalised input is scaled and shifted by the condition."""

    def __init__(self, hidden: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        z = self.norm(h) * (1.0 + scale) + shift
        return h + self.fc2(torch.nn.functional.silu(self.fc1(z)))


class ActionChunkNet(nn.Module):
    """Conditional MLP over action chunks; see the module docstring for the contract."""

    def __init__(self, config: ActionNetConfig) -> None:
        super().__init__()
        self.config = config
        flat = config.horizon * config.action_dim
        self.cond = nn.Sequential(
            nn.Linear(config.time_dim + config.state_dim, config.cond_dim),
            nn.SiLU(),
            nn.Linear(config.cond_dim, config.cond_dim),
            nn.SiLU(),
        )
        self.inp = nn.Linear(flat + config.cond_dim, config.hidden)
        self.blocks = nn.ModuleList(_FiLMBlock(config.hidden, config.cond_dim) for _ in range(config.blocks))
        self.out_norm = nn.LayerNorm(config.hidden)
        self.out = nn.Linear(config.hidden, flat)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = x.shape[0]
        if x.shape[1:] != (c.horizon, c.action_dim):
            raise ValueError(f"x must be [B, {c.horizon}, {c.action_dim}], got {tuple(x.shape)}")
        if state.shape != (b, c.state_dim):
            raise ValueError(f"state must be [{b}, {c.state_dim}], got {tuple(state.shape)}")
        tau = tau.to(x.dtype).reshape(-1).expand(b) if tau.numel() == 1 else tau.to(x.dtype).reshape(b)
        cond = self.cond(torch.cat([time_embedding(tau, c.time_dim), state.to(x.dtype)], dim=1))
        h = self.inp(torch.cat([x.reshape(b, -1), cond], dim=1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.out_norm(h)).reshape(b, c.horizon, c.action_dim)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
