"""RTC guided inpainting (chunking.rtc, chunking.realtime) for flow and diffusion samplers."""

import math

import pytest
import torch

from chunking.realtime import RealtimeConfig, realtime_chunk
from chunking.rtc import RealTimeChunkingGuide, diffusion_guidance_weight, flow_guidance_weight
from chunking.soft_mask import prefix_weights
from tests.tiny_policies import gaussian_policy

FAMILIES = ("flow", "diffusion")
B, H, A, S = 6, 8, 2, 3


def make(family):
    # Exact Gaussian denoiser inside the project's FlowPolicy / DiffusionPolicy (DDIM).
    return gaussian_policy(family, horizon=H, action_dim=A, state_dim=S, num_steps=5)


def states(seed=1):
    return torch.randn(B, S, generator=torch.Generator().manual_seed(seed))


def sample(policy, state, seed, **kw):
    return policy.sample(state, generator=torch.Generator().manual_seed(seed), **kw)


def test_flow_guidance_weight_is_clipped_at_beta_and_beta_at_tau_zero():
    tau = torch.tensor([0.0, 0.1, 0.5, 0.8])
    w = flow_guidance_weight(tau, beta=5.0)
    assert w[0].item() == 5.0  # (1 - tau) / tau is infinite at tau = 0
    assert w[1].item() == 5.0  # (0.01 + 0.81) / 0.09 = 9.1 > beta
    assert w[2].item() == pytest.approx(2.0)  # 0.5 / 0.25
    assert w[3].item() == pytest.approx((0.64 + 0.04) / 0.16)


def test_diffusion_weight_equals_the_flow_weight_on_the_matching_noise_level():
    tau = torch.tensor([0.2, 0.5, 0.7, 0.9])
    alpha_bar = tau**2 / (tau**2 + (1 - tau) ** 2)  # VP path of the flow path x_tau / c
    assert torch.allclose(diffusion_guidance_weight(alpha_bar, 50.0), flow_guidance_weight(tau, 50.0), rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_beta_zero_equals_plain_sampling(family):
    policy, state = make(family), states()
    prev = sample(policy, state, seed=7)
    plain = sample(policy, state, seed=3)
    guided = realtime_chunk(policy, state, prev, torch.ones(B, dtype=torch.bool), 2, 3,
                            RealtimeConfig(beta=0.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(guided, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_items_without_a_previous_chunk_are_sampled_plainly_inside_a_guided_batch(family):
    policy, state = make(family), states()
    prev = sample(policy, state, seed=7)
    has_prev = torch.tensor([True, False, True, False, True, False])
    plain = sample(policy, state, seed=3)
    guided = realtime_chunk(policy, state, prev, has_prev, 3, 3, RealtimeConfig(beta=5.0),
                            generator=torch.Generator().manual_seed(3))
    assert torch.allclose(guided[~has_prev], plain[~has_prev], atol=1e-5)
    assert not torch.allclose(guided[has_prev], plain[has_prev], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_previous_chunk_sampled_with_the_same_noise_is_reproduced_on_the_frozen_prefix(family):
    policy, state = make(family), states()
    prev = sample(policy, state, seed=3)
    other = sample(policy, state, seed=4)  # an independent sample, for scale
    out = realtime_chunk(policy, state, prev, torch.ones(B, dtype=torch.bool), 3, 3,
                         generator=torch.Generator().manual_seed(3))
    # Guidance only nudges where the one-step estimate x̂ differs from the final sample.
    err = (out[:, :3] - prev[:, :3]).abs().mean().item()
    spread = (other[:, :3] - prev[:, :3]).abs().mean().item()
    assert err < 0.05 * spread


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_pulls_an_independent_sample_onto_the_frozen_prefix(family):
    policy, state = make(family), states()
    prev = sample(policy, state, seed=11)
    plain = sample(policy, state, seed=3)
    out = realtime_chunk(policy, state, prev, torch.ones(B, dtype=torch.bool), 3, 3,
                         generator=torch.Generator().manual_seed(3))
    err_plain = (plain[:, :3] - prev[:, :3]).norm(dim=-1).mean().item()
    err_rtc = (out[:, :3] - prev[:, :3]).norm(dim=-1).mean().item()
    assert err_rtc < 0.35 * err_plain


def test_guide_with_per_item_d_equals_each_item_guided_alone():
    policy = make("flow")
    state = states()
    prev = sample(policy, state, seed=11)
    x = torch.randn(B, H, A, generator=torch.Generator().manual_seed(5))
    tau = torch.full((B,), 0.4)
    d = torch.tensor([0, 1, 2, 3, 4, 2])
    s = torch.tensor([1, 2, 3, 4, 4, 5])
    batched = RealTimeChunkingGuide.for_policy(policy, prev, torch.ones(B, dtype=torch.bool), d, s)
    v = batched.flow_velocity(x, tau, lambda xi: policy.net(xi, tau, state))
    for i in range(B):
        alone = RealTimeChunkingGuide.for_policy(policy, prev[i:i + 1], torch.ones(1, dtype=torch.bool), int(d[i]), int(s[i]))
        vi = alone.flow_velocity(x[i:i + 1], tau[i:i + 1], lambda xi: policy.net(xi, tau[i:i + 1], state[i:i + 1]))
        assert torch.allclose(v[i], vi[0], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_with_per_item_delays_freezes_each_items_own_prefix(family):
    policy, state = make(family), states()
    prev = sample(policy, state, seed=11)
    plain = sample(policy, state, seed=3)
    d = torch.tensor([1, 4, 1, 4, 1, 4])
    out = realtime_chunk(policy, state, prev, torch.ones(B, dtype=torch.bool), d, 4,
                         RealtimeConfig(schedule="zeros"), generator=torch.Generator().manual_seed(3))
    # Position 2 and 3 are frozen only for the d = 4 items (hard mask: no overlap weight).
    err = (out[:, 2:4] - prev[:, 2:4]).norm(dim=-1).mean(dim=1)
    err_plain = (plain[:, 2:4] - prev[:, 2:4]).norm(dim=-1).mean(dim=1)
    frozen = d == 4
    assert bool((err[frozen] < 0.35 * err_plain[frozen]).all())
    assert bool((err[~frozen] > 0.5 * err_plain[~frozen]).all())


def test_diffusion_correction_moves_the_clean_estimate_toward_the_target():
    # One step: eps_guided = eps - sqrt(ab) w g must lower the weighted error of x0_hat.
    policy = make("diffusion")
    state = states()
    target = torch.randn(B, H, A, generator=torch.Generator().manual_seed(2))
    weights = prefix_weights(H, 3, 3, "exp").expand(B, H)
    guide = RealTimeChunkingGuide(target, weights, beta=1.0)
    x = torch.randn(B, H, A, generator=torch.Generator().manual_seed(4))
    ab = torch.full((B,), 0.6)
    t = torch.full((B,), 0.5)
    denoise = lambda xi: policy.net(xi, t, state)  # noqa: E731
    with torch.no_grad():
        eps = denoise(x)
        eps_g = guide.diffusion_epsilon(x, ab, denoise)

    def err(e):
        x0 = (x - math.sqrt(0.4) * e) / math.sqrt(0.6)
        return (weights[..., None] * (target - x0)).pow(2).sum().item()

    assert err(eps_g) < err(eps)
