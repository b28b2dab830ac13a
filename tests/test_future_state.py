"""Future-state-aware rollout (VLASH): per-item rollout through pending actions of different lengths."""

import pytest
import torch

from chunking.dynamics import future_state_fn
from chunking.future_state import last_commanded_position, rollout_pending, rollout_with
from chunking.realtime import RealtimeConfig, realtime_chunk
from tiny_policies import small_policy


def integrate(state, action):
    """A one-tick model: position += action, velocity = action."""
    return torch.stack([state[:, 0] + action[:, 0], action[:, 0]], dim=1)


def test_each_item_is_rolled_through_its_own_number_of_pending_actions():
    state = torch.zeros(3, 2)
    pending = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])[..., None]
    out = rollout_pending(state, pending, torch.tensor([0, 1, 3]), integrate)
    assert out[:, 0].tolist() == [0.0, 1.0, 7.0]
    assert out[:, 1].tolist() == [0.0, 1.0, 4.0]


def test_more_steps_than_pending_actions_is_refused():
    with pytest.raises(ValueError):
        rollout_pending(torch.zeros(1, 2), torch.zeros(1, 2, 1), torch.tensor([3]), integrate)


def test_last_commanded_position_replaces_the_position_entries_only_where_actions_are_pending():
    fn = last_commanded_position(state_index=[0, 1])
    state = torch.tensor([[5.0, 5.0, 9.0], [5.0, 5.0, 9.0]])
    pending = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]])
    out = fn(state, pending, torch.tensor([2, 0]))
    assert out.tolist() == [[3.0, 4.0, 9.0], [5.0, 5.0, 9.0]]


def test_a_task_rollout_clips_pending_actions_as_the_simulator_clips_commands():
    rollout = future_state_fn("whack", control_hz=50.0)
    state = torch.zeros(1, 6)
    n = torch.tensor([2])
    assert torch.equal(rollout(state, torch.full((1, 2, 2), 5.0), n), rollout(state, torch.ones(1, 2, 2), n))


def test_a_task_without_a_one_tick_model_is_refused():
    with pytest.raises(KeyError, match="known"):
        future_state_fn("juggle", control_hz=50.0)


def test_future_state_chunk_is_conditioned_on_each_items_rolled_state_and_reindexed():
    """With beta = 0 (no inpainting), realtime_chunk with future state must return, per item,
    the d pending actions followed by a plain sample from the state rolled d ticks ahead."""
    policy = small_policy("flow", horizon=8, action_dim=1, state_dim=2)
    state = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    prev = torch.randn(3, 8, 1, generator=torch.Generator().manual_seed(1))
    d = torch.tensor([0, 2, 3])
    future_fn = rollout_with(integrate)
    out = realtime_chunk(policy, state, prev, torch.ones(3, dtype=torch.bool), d, 3, RealtimeConfig(beta=0.0),
                         future_state_fn=future_fn, generator=torch.Generator().manual_seed(5))
    rolled = future_fn(state, prev[:, :3], d)
    new = policy.sample(rolled, generator=torch.Generator().manual_seed(5))
    for i, di in enumerate(d.tolist()):
        assert torch.equal(out[i, :di], prev[i, :di])
        assert torch.allclose(out[i, di:], new[i, : 8 - di], atol=1e-6)


def test_items_without_a_previous_chunk_are_not_rolled_forward():
    policy = small_policy("flow", horizon=8, action_dim=1, state_dim=2)
    state = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    prev = torch.randn(2, 8, 1, generator=torch.Generator().manual_seed(1))
    out = realtime_chunk(policy, state, prev, torch.tensor([False, False]), 3, 3, RealtimeConfig(beta=0.0),
                         future_state_fn=rollout_with(integrate), generator=torch.Generator().manual_seed(5))
    plain = policy.sample(state, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, plain, atol=1e-6)
