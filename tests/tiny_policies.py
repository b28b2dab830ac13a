"""Small policies for the chunking tests: the project's FlowPolicy and DiffusionPolicy,
randomly initialised with a narrow network (a test samples hundreds of chunks in
milliseconds), and a deterministic ClockPolicy for timing logic."""

from __future__ import annotations

import torch
from policies.base import PolicyConfig


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


def small_policy(family: str, horizon: int = 8, action_dim: int = 2, state_dim: int = 3, num_steps: int = 5, seed: int = 0):
    """The project's own FlowPolicy / DiffusionPolicy, randomly initialised and small."""
    from policies.checkpoint import build_policy

    torch.manual_seed(seed)
    policy = build_policy(tiny_config(family, horizon, action_dim, state_dim, num_steps))
    for p in policy.parameters():
        p.requires_grad_(False)
    return policy


class GaussianChunkNet(torch.nn.Module):
    """The exact denoiser for normalised chunks ``x1 ~ N(mu(state), sigma^2 I)``, with
    ``mu = state @ M`` for a fixed random ``M``: the Bayes-optimal velocity (flow, tau 0 =
    noise) or noise prediction (diffusion, tau = t / T). Put inside the project's policy
    classes it makes their samples a known distribution, so guidance can be checked
    against real samples of the policy rather than the output of an untrained net."""

    def __init__(self, family: str, horizon: int, action_dim: int, state_dim: int, sigma: float = 0.5,
                 alphas_cumprod: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("m", torch.randn(state_dim, horizon * action_dim, generator=g))
        self.family, self.shape, self.sigma = family, (horizon, action_dim), sigma
        self.alphas_cumprod = alphas_cumprod

    def forward(self, x: torch.Tensor, tau: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        mu = (state @ self.m).reshape(x.shape[0], *self.shape)
        var = self.sigma**2
        t = tau.reshape(-1, 1, 1).to(x.dtype)
        if self.family == "flow":
            mean_x1 = mu + t * var / (t**2 * var + (1 - t) ** 2) * (x - t * mu)
            mean_eps = (x - t * mean_x1) / (1 - t)
            return mean_x1 - mean_eps
        steps = self.alphas_cumprod.shape[0]
        ab = self.alphas_cumprod[(tau * steps).round().long().clamp(0, steps - 1)].reshape(-1, 1, 1).to(x.dtype)
        return (1 - ab).sqrt() / (ab * var + 1 - ab) * (x - ab.sqrt() * mu)


def gaussian_policy(family: str, horizon: int = 8, action_dim: int = 2, state_dim: int = 3, num_steps: int = 5):
    """The project's policy of ``family`` with :class:`GaussianChunkNet` as its network."""
    policy = small_policy(family, horizon, action_dim, state_dim, num_steps)
    ab = policy.train_scheduler.alphas_cumprod if family == "diffusion" else None
    policy.net = GaussianChunkNet(family, horizon, action_dim, state_dim, alphas_cumprod=ab)
    return policy


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


def expert_flow_policy(task_name: str = "table", num_steps: int = 2):
    """A flow policy whose "network" is a simulated task's chunk-level expert: the velocity
    field carries every sample straight to ``task.expert_chunk(state)`` (exact after the last
    Euler step), so the guides, the future-state rollout and the execution strategies run on
    it as on a trained policy, with none of a trained policy's errors and no training."""
    from clients.sim import make_task
    from policies.flow import FlowPolicy

    task = make_task(task_name)

    class ExpertFlowPolicy(FlowPolicy):
        def encode(self, observation: dict) -> torch.Tensor:
            return self.normalize_actions(task.expert_chunk(self._check_state(observation["state"])))

        def velocity(self, x: torch.Tensor, tau: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
            return (conditioning - x) / (1.0 - tau.reshape(-1, 1, 1)).clamp(min=1e-6)

    config = tiny_config("flow", horizon=task.horizon, action_dim=task.action_dim, state_dim=task.state_dim,
                         num_steps=num_steps)
    config.task, config.hidden = task_name, 8
    config.action_mean = [0.0] * task.action_dim
    config.action_std = [1.0] * task.action_dim
    policy = ExpertFlowPolicy(config)
    for p in policy.parameters():
        p.requires_grad_(False)
    return policy
