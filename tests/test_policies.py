"""Specification of the flow and diffusion chunk policies and their checkpoints."""

from __future__ import annotations

import pytest
import torch

from models.action_net import ActionChunkNet, ActionNetConfig, num_parameters
from policies.base import CHECKPOINT_DIR, PolicyConfig, WarmStart, checkpoint_paths
from policies.checkpoint import build_policy, load_policy, save_policy

H, A, S = 8, 2, 3
FAMILIES = ("flow", "diffusion")


def make_config(family: str, num_steps: int = 5) -> PolicyConfig:
    return PolicyConfig(
        task="toy", family=family, horizon=H, action_dim=A, state_dim=S, control_hz=50.0,
        num_steps=num_steps, state_mean=[0.5, -1.0, 2.0], state_std=[2.0, 1.0, 0.5],
        action_mean=[0.1, -0.2], action_std=[0.5, 2.0], hidden=32,
    )


def make_policy(family: str, num_steps: int = 5):
    torch.manual_seed(0)
    return build_policy(make_config(family, num_steps))


class CountingGuide:
    """A guide that returns the bare network output and records each call."""

    def __init__(self) -> None:
        self.levels: list[float] = []
        self.grad_ok = True

    def _call(self, x, level, denoise):
        self.levels.append(float(level[0]))
        z = x.detach().requires_grad_(True)
        out = denoise(z)
        (grad,) = torch.autograd.grad(out.sum(), z)
        self.grad_ok &= bool(torch.isfinite(grad).all())
        return out

    def flow_velocity(self, x, tau, denoise):
        return self._call(x, tau, denoise)

    def diffusion_epsilon(self, x, alpha_bar, denoise):
        return self._call(x, alpha_bar, denoise)


def count_forwards(policy) -> list[int]:
    calls = [0]
    policy.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_action_net_maps_chunks_to_chunks_with_a_few_hundred_thousand_parameters():
    net = ActionChunkNet(ActionNetConfig(horizon=16, action_dim=2, state_dim=6))
    out = net(torch.randn(4, 16, 2), torch.rand(4), torch.randn(4, 6))
    assert out.shape == (4, 16, 2)
    assert 100_000 <= num_parameters(net) <= 500_000


def test_action_net_rejects_a_chunk_of_the_wrong_shape():
    net = ActionChunkNet(ActionNetConfig(horizon=16, action_dim=2, state_dim=6))
    with pytest.raises(ValueError):
        net(torch.randn(4, 8, 2), torch.rand(4), torch.randn(4, 6))


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_returns_a_chunk_per_state(family):
    chunks = make_policy(family).sample(torch.randn(5, S))
    assert chunks.shape == (5, H, A) and chunks.dtype == torch.float32
    assert bool(torch.isfinite(chunks).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_is_reproducible_under_a_generator(family):
    policy = make_policy(family)
    state = torch.randn(3, S)
    a = policy.sample(state, generator=torch.Generator().manual_seed(4))
    b = policy.sample(state, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_rejects_a_state_of_the_wrong_width(family):
    with pytest.raises(ValueError):
        make_policy(family).sample(torch.randn(2, S + 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_normalisation_round_trips(family):
    policy = make_policy(family)
    actions = torch.randn(2, H, A)
    torch.testing.assert_close(policy.unnormalize_actions(policy.normalize_actions(actions)), actions)


@pytest.mark.parametrize("family,steps", [("flow", 5), ("diffusion", 10)])
def test_full_sampling_runs_the_network_once_per_step(family, steps):
    policy = make_policy(family, steps)
    calls = count_forwards(policy)
    policy.sample(torch.randn(2, S))
    assert calls[0] == steps


@pytest.mark.parametrize("family", FAMILIES)
def test_num_steps_overrides_the_configured_step_count(family):
    policy = make_policy(family, 5)
    calls = count_forwards(policy)
    policy.sample(torch.randn(2, S), num_steps=3)
    assert calls[0] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_runs_only_the_asked_steps(family):
    policy = make_policy(family, 5)
    calls = count_forwards(policy)
    previous = policy.sample(torch.randn(2, S))
    calls[0] = 0
    policy.sample(torch.randn(2, S), warm_start=WarmStart(previous, steps=2))
    assert calls[0] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_with_too_many_steps_is_refused(family):
    policy = make_policy(family, 5)
    with pytest.raises(ValueError):
        policy.sample(torch.randn(2, S), warm_start=WarmStart(torch.zeros(2, H, A), steps=6))


class RecordingFlowGuide:
    """A pass-through guide that records the flow time and the sample each step starts from."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, torch.Tensor]] = []

    def flow_velocity(self, x, tau, denoise):
        self.steps.append((float(tau[0]), x.detach().clone()))
        with torch.no_grad():
            return denoise(x)


def test_flow_warm_start_renoises_the_given_chunk_to_the_flow_time_of_its_last_steps():
    policy = make_policy("flow", 10)
    state = torch.randn(2, S)
    given = torch.full((2, H, A), 0.3)
    plain, warm = RecordingFlowGuide(), RecordingFlowGuide()
    policy.sample(state, guide=plain, generator=torch.Generator().manual_seed(5))
    policy.sample(state, guide=warm, warm_start=WarmStart(given, steps=1), generator=torch.Generator().manual_seed(5))
    noise = plain.steps[0][1]  # plain sampling starts from the noise itself, at tau = 0
    [(tau0, start)] = warm.steps  # one step, from tau0 = 1 - k/n = 0.9
    assert tau0 == pytest.approx(0.9)
    torch.testing.assert_close(start, 0.1 * noise + 0.9 * policy.normalize_actions(given))


def test_flow_guide_is_called_once_per_step_with_increasing_flow_time():
    guide = CountingGuide()
    make_policy("flow", 5).sample(torch.randn(2, S), guide=guide)
    assert guide.levels == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert guide.grad_ok


def test_diffusion_guide_is_called_once_per_step_with_rising_alpha_bar():
    guide = CountingGuide()
    make_policy("diffusion", 10).sample(torch.randn(2, S), guide=guide)
    assert len(guide.levels) == 10
    assert guide.levels == sorted(guide.levels) and guide.levels[0] < 0.05 and guide.grad_ok


@pytest.mark.parametrize("family", FAMILIES)
def test_a_guide_that_returns_the_network_output_changes_nothing(family):
    policy = make_policy(family)
    state = torch.randn(3, S)
    plain = policy.sample(state, generator=torch.Generator().manual_seed(1))
    guided = policy.sample(state, guide=CountingGuide(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_calls_the_guide_only_for_the_asked_steps(family):
    policy = make_policy(family, 5)
    guide = CountingGuide()
    policy.sample(torch.randn(2, S), guide=guide, warm_start=WarmStart(torch.zeros(2, H, A), steps=3))
    assert len(guide.levels) == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_reproduces_samples(family, tmp_path):
    policy = make_policy(family)
    weights, config = save_policy(policy, tmp_path)
    assert (weights, config) == checkpoint_paths("toy", family, tmp_path)
    loaded = load_policy("toy", family, tmp_path)
    assert loaded.config == policy.config
    state = torch.randn(3, S)
    torch.testing.assert_close(
        loaded.sample(state, generator=torch.Generator().manual_seed(2)),
        policy.sample(state, generator=torch.Generator().manual_seed(2)),
    )


def test_loading_a_missing_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy("toy", "flow", tmp_path)


def test_loading_weights_that_do_not_match_the_config_raises_value_error(tmp_path):
    save_policy(make_policy("flow"), tmp_path)
    _, config_path = checkpoint_paths("toy", "flow", tmp_path)
    config_path.write_text(config_path.read_text().replace('"hidden": 32', '"hidden": 64'))
    with pytest.raises(ValueError):
        load_policy("toy", "flow", tmp_path)


SHIPPED = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json")
                 if p.stem.rpartition("_")[2] in ("flow", "diffusion"))  # the policies (not dsm_asr)


@pytest.mark.parametrize("stem", SHIPPED)
def test_every_shipped_checkpoint_loads_samples_and_is_small(stem):
    task, family = stem.rsplit("_", 1)
    policy = load_policy(task, family)
    weights, _ = checkpoint_paths(task, family)
    assert weights.stat().st_size < 5 * 1024 * 1024
    chunks = policy.sample(torch.tensor([policy.config.state_mean]))
    assert chunks.shape == (1, policy.config.horizon, policy.config.action_dim)


def make_v_policy():
    config = make_config("diffusion", 5)
    config.extra["prediction_type"] = "v_prediction"
    torch.manual_seed(0)
    return build_policy(config)


def test_v_prediction_output_converts_back_to_the_noise_that_made_the_sample():
    policy = make_v_policy()
    x0, eps = torch.randn(4, H, A), torch.randn(4, H, A)
    t = torch.tensor([0, 30, 60, 90])
    x_t = policy.train_scheduler.add_noise(x0, eps, t)
    v = policy.train_scheduler.get_velocity(x0, eps, t)
    alpha_bar = policy.train_scheduler.alphas_cumprod[t]
    torch.testing.assert_close(policy._epsilon(v, x_t, alpha_bar), eps, rtol=1e-4, atol=1e-4)


def test_v_prediction_policy_samples_and_a_pass_through_guide_changes_nothing():
    policy = make_v_policy()
    state = torch.randn(3, S)
    plain = policy.sample(state, generator=torch.Generator().manual_seed(1))
    guided = policy.sample(state, guide=CountingGuide(), generator=torch.Generator().manual_seed(1))
    assert plain.shape == (3, H, A)
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


def test_an_unknown_prediction_type_is_refused():
    config = make_config("diffusion")
    config.extra["prediction_type"] = "sample"
    with pytest.raises(ValueError):
        build_policy(config)
