"""RTC guided inpainting (chunking.rtc, chunking.realtime) for flow and diffusion samplers."""

import math

import pytest
import torch

from chunking.realtime import RealtimeConfig, realtime_chunk
from chunking.rtc import RealTimeChunkingGuide, diffusion_guidance_weight, flow_guidance_weight
from chunking.soft_mask import prefix_weights
from tiny_policies import gaussian_policy

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


# The guided step against the paper's expressions on a linear field, whose Jacobian is known:
# v(x) = k x + m (flow velocity) or eps(x) = k x + m (diffusion noise prediction), k a scalar.
K = 0.6


def linear_field(seed: int, batch: int):
    m = torch.randn(batch, H, A, generator=torch.Generator().manual_seed(seed))
    return lambda x: K * x + m


def guide_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, H, A, generator=g)
    weights = torch.rand(batch, H, generator=g)  # any weights: the step must not depend on the mask's shape
    x = torch.randn(batch, H, A, generator=g)
    return target, weights, x


def rtc_flow_weight(tau: torch.Tensor, beta: float) -> torch.Tensor:
    """RTC Algorithm 1: min(beta, (1 - tau) / (tau r²)), r² = (1 - tau)² / (tau² + (1 - tau)²)."""
    r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    return torch.clamp((1 - tau) / (tau * r2), max=beta)


FLOW_TAUS = [0.1, 0.3, 0.5, 0.8]  # beta = 5 clips the weight at 0.1 (9.1) only
DIFFUSION_ALPHA_BARS = [0.05, 0.3, 0.6, 0.95]  # beta = 3 clips at 0.05 and 0.95 (4.6) only


@pytest.mark.parametrize("batch", [len(FLOW_TAUS), 1], ids=["batched", "alone"])
def test_guided_flow_velocity_is_the_papers_step_on_a_linear_field(batch):
    beta = 5.0
    for first in range(0, len(FLOW_TAUS), batch):
        tau = torch.tensor(FLOW_TAUS[first:first + batch])
        target, weights, x = guide_inputs(batch, seed=first)
        velocity = linear_field(first, batch)
        t = tau.reshape(-1, 1, 1)
        x1_hat = x + (1 - t) * velocity(x)  # one-step estimate of the clean chunk
        g = (1 + (1 - t) * K) * (weights[..., None] * (target - x1_hat))  # eᵀ ∂x̂1/∂x
        expected = velocity(x) + rtc_flow_weight(t, beta) * g
        guided = RealTimeChunkingGuide(target, weights, beta).flow_velocity(x, tau, velocity)
        torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [len(DIFFUSION_ALPHA_BARS), 1], ids=["batched", "alone"])
def test_guided_diffusion_epsilon_is_the_pigdm_step_on_a_linear_field(batch):
    beta = 3.0
    for first in range(0, len(DIFFUSION_ALPHA_BARS), batch):
        ab = torch.tensor(DIFFUSION_ALPHA_BARS[first:first + batch])
        target, weights, x = guide_inputs(batch, seed=first)
        epsilon = linear_field(first, batch)
        a = ab.reshape(-1, 1, 1)
        x0_hat = (x - (1 - a).sqrt() * epsilon(x)) / a.sqrt()
        g = (1 - (1 - a).sqrt() * K) / a.sqrt() * (weights[..., None] * (target - x0_hat))  # eᵀ ∂x̂0/∂x
        # ΠGDM adds g / r² to the score, r² = 1 - ᾱ, and ε = -sqrt(1 - ᾱ) score; the clip at
        # beta (on the flow weight of the same noise level, 1 / sqrt(ᾱ (1 - ᾱ))) scales it down.
        clip = torch.clamp(beta * (a * (1 - a)).sqrt(), max=1.0)
        expected = epsilon(x) - clip * g / (1 - a).sqrt()
        guided = RealTimeChunkingGuide(target, weights, beta).diffusion_epsilon(x, ab, epsilon)
        torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)
