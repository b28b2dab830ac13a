"""Headway's sampling loops around a plug-in's denoising step (policies.sampling), without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from chunking.realtime import RealtimeConfig, realtime_chunk
from chunking.rtc import RealTimeChunkingGuide, flow_guidance_weight
from plugin_policies import droid, expected_chunk
from policies.base import ImageInput, PolicySpec, TextInput, VectorInput, WarmStart
from policies.sampling import BoundPolicy, PluginSampler, blank_observation, collate, to_epsilon

A = 2


class LinearFlow:
    """A flow plug-in whose velocity mixes every row of the trajectory: v = x K + c (flattened)."""

    def __init__(self, horizon: int, trajectory: int, chunk_start: int, seed: int = 0) -> None:
        self.spec = PolicySpec("flow", horizon=horizon, action_dim=A, control_hz=10.0, num_steps=4,
                               inputs={"state": VectorInput(A)}, state_keys=("state",),
                               trajectory_horizon=trajectory, chunk_start=chunk_start)
        g = torch.Generator().manual_seed(seed)
        self.k = 0.3 * torch.randn(trajectory * A, trajectory * A, generator=g)

    def normalize_actions(self, actions):
        return actions

    def unnormalize_actions(self, actions):
        return actions

    def encode(self, observation):
        return observation["state"]

    def velocity(self, x, tau, conditioning):
        b = x.shape[0]
        return (x.reshape(b, -1) @ self.k).reshape(x.shape) + conditioning[:, None, :]


class SmallEpsNet(torch.nn.Module):
    """A tiny nonlinear network of (x, t, conditioning) for diffusion plug-ins."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = torch.nn.Linear(horizon * A + 1 + A, horizon * A)

    def forward(self, x, t, cond):
        b = x.shape[0]
        h = torch.cat([x.reshape(b, -1), t.float()[:, None] / 100.0, cond], dim=1)
        return torch.tanh(self.layer(h)).reshape(x.shape)


class DiffusionPlugin:
    def __init__(self, scheduler, prediction_type: str = "epsilon", horizon: int = 8, num_steps: int = 10) -> None:
        self.spec = PolicySpec("diffusion", horizon=horizon, action_dim=A, control_hz=10.0, num_steps=num_steps,
                               inputs={"state": VectorInput(A)}, state_keys=("state",))
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.net = SmallEpsNet(horizon)

    def normalize_actions(self, actions):
        return actions * 0.5

    def unnormalize_actions(self, actions):
        return actions * 2.0

    def encode(self, observation):
        return observation["state"]

    def denoise(self, x, t, conditioning):
        return self.net(x, t, conditioning)


class FixedChunks:
    """A one-shot plug-in: the chunk is the state repeated, whatever the noise."""

    spec = PolicySpec("oneshot", horizon=4, action_dim=A, control_hz=10.0, inputs={"state": VectorInput(A)},
                      state_keys=("state",))

    def normalize_actions(self, actions):
        return actions

    def unnormalize_actions(self, actions):
        return actions

    def encode(self, observation):
        return observation["state"]

    def sample_chunk(self, conditioning, generator):
        return conditioning[:, None, :].expand(-1, 4, -1).clone()


def bound(plugin, states: np.ndarray) -> BoundPolicy:
    observations = [{"state": s} for s in states]
    return BoundPolicy(PluginSampler(plugin), collate(observations, plugin.spec), len(states))


def test_a_widened_guide_is_algorithm_1_over_the_whole_trajectory_with_nothing_pulled_outside_the_chunk():
    plugin = LinearFlow(horizon=4, trajectory=6, chunk_start=1)
    b, t_len, h = 2, 6, 4
    x = torch.randn(b, t_len, A, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(b, A)
    tau = torch.tensor([0.25, 0.6])
    chunk_target, chunk_weights = torch.randn(b, h, A), torch.rand(b, h)
    widened = RealTimeChunkingGuide(chunk_target, chunk_weights, beta=5.0).widened(1, t_len)
    guided = widened.flow_velocity(x, tau, lambda z: plugin.velocity(z, tau, cond))
    # Algorithm 1 by hand: x̂1 = x + (1 - tau) v is linear in x, with Jacobian I + (1 - tau) K.
    y = torch.zeros(b, t_len, A)
    w = torch.zeros(b, t_len)
    y[:, 1:5], w[:, 1:5] = chunk_target, chunk_weights
    v = plugin.velocity(x, tau, cond)
    x_hat = x + (1 - tau)[:, None, None] * v
    error = (w[..., None] * (y - x_hat)).reshape(b, -1)
    jacobian = torch.eye(t_len * A)[None] + (1 - tau)[:, None, None] * plugin.k.T[None]
    g = torch.einsum("bi,bij->bj", error, jacobian).reshape(b, t_len, A)
    expected = v + flow_guidance_weight(tau, 5.0)[:, None, None] * g
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-5)


def test_a_guide_cannot_be_widened_to_a_trajectory_the_chunk_does_not_fit():
    with pytest.raises(ValueError):
        RealTimeChunkingGuide(torch.zeros(1, 4, A), torch.ones(1, 4), 1.0).widened(3, 6)


def test_a_windowed_policy_serves_the_rows_of_its_trajectory_from_chunk_start():
    plugin = LinearFlow(horizon=4, trajectory=6, chunk_start=1)
    sampler = PluginSampler(plugin)
    cond = torch.randn(3, A)
    whole = PluginSampler(LinearFlow(horizon=6, trajectory=6, chunk_start=0))
    chunk = sampler.sample(cond, 3, generator=torch.Generator().manual_seed(4))
    trajectory = whole.sample(cond, 3, generator=torch.Generator().manual_seed(4))
    assert chunk.shape == (3, 4, A)
    torch.testing.assert_close(chunk, trajectory[:, 1:5])


def test_a_windowed_policy_refuses_a_warm_start():
    sampler = PluginSampler(LinearFlow(horizon=4, trajectory=6, chunk_start=1))
    with pytest.raises(ValueError, match="whole trajectory"):
        sampler.sample(torch.zeros(1, A), 1, warm_start=WarmStart(torch.zeros(1, 4, A), 1))


@pytest.mark.parametrize("scheduler", [
    DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True),
    DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False),
], ids=["ddpm", "ddim"])
def test_plain_sampling_of_a_diffusion_plugin_is_its_schedulers_own_loop(scheduler):
    plugin = DiffusionPlugin(scheduler)
    cond = torch.randn(3, A)
    ours = PluginSampler(plugin).sample(cond, 3, generator=torch.Generator().manual_seed(7))
    # diffusers' loop, as a user of the scheduler writes it (DDPM draws its variance noise here too).
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, A, generator=generator)
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        out = plugin.net(x, torch.full((3,), int(t)), cond)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, plugin.unnormalize_actions(x))


def test_a_plugin_that_predicts_the_sample_is_stepped_as_its_scheduler_steps_it():
    make = lambda kind: DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",  # noqa: E731
                                      clip_sample=True, prediction_type=kind)
    plugin = DiffusionPlugin(make("sample"), prediction_type="sample")
    cond = torch.randn(2, A)
    ours = PluginSampler(plugin).sample(cond, 2, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    scheduler = make("sample")
    x = torch.randn(2, 8, A, generator=generator)
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        x = scheduler.step(plugin.net(x, torch.full((2,), int(t)), cond), t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, plugin.unnormalize_actions(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_to_epsilon_recovers_the_noise_that_made_the_sample(kind):
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    x0, eps = torch.randn(4, 8, A), torch.randn(4, 8, A)
    t = torch.tensor([0, 30, 60, 99])
    x_t = scheduler.add_noise(x0, eps, t)
    output = x0 if kind == "sample" else scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(to_epsilon(output, x_t, scheduler.alphas_cumprod[t], kind), eps, rtol=1e-3, atol=1e-3)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        PluginSampler(DiffusionPlugin(DDIMScheduler(), prediction_type="score"))


def test_rtc_on_a_diffusion_plugin_freezes_the_actions_that_execute_meanwhile():
    plugin = DiffusionPlugin(DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                           clip_sample=False), num_steps=10)
    states = np.random.default_rng(0).standard_normal((3, A)).astype(np.float32)
    policy = bound(plugin, states)
    generator = torch.Generator().manual_seed(5)
    plain = policy.sample(policy.state, generator=generator)
    prev = plain + 0.5  # a previous plan the new one must follow where it is frozen
    guided = realtime_chunk(policy, policy.state, prev, torch.ones(3, dtype=torch.bool), 2, 4,
                            RealtimeConfig(beta=10.0), generator=torch.Generator().manual_seed(5))
    unguided = realtime_chunk(policy, policy.state, prev, torch.ones(3, dtype=torch.bool), 2, 4,
                              RealtimeConfig(beta=0.0), generator=torch.Generator().manual_seed(5))
    frozen_error = (guided[:, :2] - prev[:, :2]).abs().mean()
    assert frozen_error < 0.5 * (unguided[:, :2] - prev[:, :2]).abs().mean()


def test_a_bound_policy_samples_from_the_state_it_is_given_split_back_into_its_state_keys():
    policy = droid()
    observation = {key: value for key, value in blank_observation(policy.spec).items()}
    observation["observation/joint_position"] = np.arange(7, dtype=np.float32)
    observation["observation/gripper_position"] = np.array([0.5], np.float32)
    observation["prompt"] = "pick up the cup"
    view = BoundPolicy(PluginSampler(policy), collate([observation], policy.spec), 1)
    assert view.state.tolist() == [[0, 1, 2, 3, 4, 5, 6, 0.5]]
    moved = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1, 0]])
    chunk = view.sample(moved, generator=torch.Generator().manual_seed(0))
    expected = expected_chunk({**observation, "observation/joint_position": np.arange(7, 0, -1, dtype=np.float32),
                               "observation/gripper_position": np.zeros(1, np.float32)}, policy.spec)
    np.testing.assert_allclose(chunk[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_collate_stacks_each_declared_key_and_leaves_the_others_out():
    spec = PolicySpec("flow", horizon=4, action_dim=A, control_hz=10.0, state_keys=("state",),
                      inputs={"state": VectorInput(2), "cam": ImageInput(4, 5), "prompt": TextInput()})
    observations = [{"state": np.array([1.0, 2.0]), "cam": np.full((4, 5, 3), 7, np.uint8), "prompt": "a",
                     "extra": 1},
                    {"state": np.array([3.0, 4.0]), "cam": np.zeros((4, 5, 3), np.uint8)}]
    batch = collate(observations, spec)
    assert sorted(batch) == ["cam", "prompt", "state"]
    assert batch["state"].dtype == torch.float32 and batch["state"].tolist() == [[1, 2], [3, 4]]
    assert batch["cam"].dtype == torch.uint8 and batch["cam"].shape == (2, 4, 5, 3)
    assert batch["prompt"] == ["a", None]


def test_a_one_shot_plugin_ignores_the_guide_and_refuses_a_warm_start():
    policy = bound(FixedChunks(), np.array([[1.0, 2.0]], np.float32))
    guide = RealTimeChunkingGuide(torch.zeros(1, 4, A), torch.ones(1, 4), 5.0)
    chunk = policy.sample(policy.state, guide=guide)
    assert chunk.tolist() == [[[1.0, 2.0]] * 4]
    with pytest.raises(ValueError, match="one-shot"):
        policy.sample(policy.state, warm_start=WarmStart(chunk, 1))


def test_a_spec_refuses_a_state_key_that_is_not_a_vector_input():
    with pytest.raises(ValueError, match="state key"):
        PolicySpec("flow", horizon=4, action_dim=A, control_hz=10.0, inputs={"cam": ImageInput(4, 4)},
                   state_keys=("cam",))


def test_a_spec_refuses_a_chunk_that_does_not_fit_its_trajectory():
    with pytest.raises(ValueError, match="does not fit"):
        PolicySpec("flow", horizon=4, action_dim=A, control_hz=10.0, inputs={}, trajectory_horizon=4, chunk_start=1)
