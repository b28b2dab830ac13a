"""Tiny randomly initialised ChunkPolicy implementations for the chunking tests.

They follow ``policies.base`` exactly (robot units in and out, guide called once per
step, WarmStart re-noised to the level of its last steps) but are small enough that a
test samples hundreds of chunks in milliseconds. Flow: Euler, tau 0 = noise -> 1 = data.
Diffusion: diffusers DDIM, epsilon prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.base import PolicyConfig, StepGuide, WarmStart


def tiny_config(family: str, horizon: int = 8, action_dim: int = 2, state_dim: int = 3, num_steps: int = 5) -> PolicyConfig:
    return PolicyConfig(
        task="tiny",
        family=family,  # type: ignore[arg-type]
        horizon=horizon,
        action_dim=action_dim,
        state_dim=state_dim,
        control_hz=50.0,
        num_steps=num_steps,
        state_mean=[0.0] * state_dim,
        state_std=[1.0] * state_dim,
        action_mean=[0.1] * action_dim,
        action_std=[0.5] * action_dim,
        hidden=32,
    )


class _Net(nn.Module):
    def __init__(self, config: PolicyConfig, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        flat = config.horizon * config.action_dim
        self.body = nn.Sequential(
            nn.Linear(flat + config.state_dim + 1, config.hidden), nn.Tanh(), nn.Linear(config.hidden, flat)
        )
        self.shape = (config.horizon, config.action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x.flatten(1), state, t.reshape(-1, 1).to(x.dtype)], dim=1)
        return self.body(inp).reshape(x.shape[0], *self.shape)


class _Base:
    def __init__(self, config: PolicyConfig, seed: int = 0) -> None:
        self.config = config
        self.net = _Net(config, seed)
        self.mean = torch.tensor(config.action_mean)
        self.std = torch.tensor(config.action_std)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.mean) / self.std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.std + self.mean

    def _noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(batch, self.config.horizon, self.config.action_dim, generator=generator)


class TinyFlowPolicy(_Base):
    def sample(self, state, *, guide: StepGuide | None = None, warm_start: WarmStart | None = None,
               num_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        n = num_steps or self.config.num_steps
        batch = state.shape[0]
        with torch.no_grad():
            x = self._noise(batch, generator)
            first = 0
            if warm_start is not None:
                first = n - warm_start.steps
                tau0 = first / n
                x = tau0 * self.normalize_actions(warm_start.chunk) + (1 - tau0) * x
            for k in range(first, n):
                tau = torch.full((batch,), k / n)
                denoise = lambda xi, tau=tau: self.net(xi, tau, state)  # noqa: E731
                v = guide.flow_velocity(x, tau, denoise) if guide is not None else denoise(x)
                x = x + v / n
        return self.unnormalize_actions(x)


class TinyDiffusionPolicy(_Base):
    def __init__(self, config: PolicyConfig, seed: int = 0) -> None:
        super().__init__(config, seed)
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)

    def sample(self, state, *, guide: StepGuide | None = None, warm_start: WarmStart | None = None,
               num_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        n = num_steps or self.config.num_steps
        batch = state.shape[0]
        self.scheduler.set_timesteps(n)
        timesteps = list(self.scheduler.timesteps)
        with torch.no_grad():
            x = self._noise(batch, generator)
            if warm_start is not None:
                timesteps = timesteps[n - warm_start.steps:]
                x = self.scheduler.add_noise(self.normalize_actions(warm_start.chunk), x, torch.tensor([int(timesteps[0])]))
            for t in timesteps:
                t_b = torch.full((batch,), float(t) / 100.0)
                denoise = lambda xi, t_b=t_b: self.net(xi, t_b, state)  # noqa: E731
                if guide is not None:
                    ab = self.scheduler.alphas_cumprod[int(t)].expand(batch)
                    eps = guide.diffusion_epsilon(x, ab, denoise)
                else:
                    eps = denoise(x)
                x = self.scheduler.step(eps, t, x).prev_sample
        return self.unnormalize_actions(x)


class ClockPolicy:
    """A deterministic stand-in whose chunks say which tick each action was planned for.

    The state's entry 0 is the tick of the observation; ``chunk[b, i, 0] = state[b, 0] + i``
    (the tick action i applies to if index 0 applies at the observation's tick) and
    ``chunk[b, i, 1] = state[b, 1]`` (an item tag). Guides and warm starts are accepted and
    ignored, so the timing logic of a strategy can be read off the executed actions.
    """

    def __init__(self, horizon: int = 8) -> None:
        self.config = tiny_config("flow", horizon=horizon, action_dim=2, state_dim=2)
        self.calls = 0

    def normalize_actions(self, actions):
        return actions

    def unnormalize_actions(self, actions):
        return actions

    def sample(self, state, *, guide=None, warm_start=None, num_steps=None, generator=None):
        self.calls += 1
        i = torch.arange(self.config.horizon, dtype=torch.float32)[None, :]
        return torch.stack([state[:, :1] + i, state[:, 1:2].expand(-1, self.config.horizon)], dim=-1)
