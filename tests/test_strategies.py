"""Execution strategies (chunking.strategies)."""

import math

import pytest
import torch

from chunking.bid import select_coherent
from chunking.ensemble import EnsembleConfig, TemporalEnsemble
from chunking.future_state import rollout_with
from chunking.strategies import STRATEGIES, ChunkedController, StrategyConfig
from tiny_policies import ClockPolicy, small_policy

HOLD = -100.0


def clock_world(batch=2):
    """state = (tick, item tag); the robot's actions do not matter to it."""
    return torch.stack([torch.zeros(batch), torch.arange(batch, dtype=torch.float32)], dim=1)


def run_clock(name, d, s, ticks=30, horizon=8):
    policy = ClockPolicy(horizon)
    future = rollout_with(lambda st, a: st + torch.tensor([1.0, 0.0]))  # the tick advances by one
    ctrl = ChunkedController(policy, StrategyConfig(name), d, s, future_state_fn=future,
                             hold_action=lambda st, last: torch.full_like(last, HOLD))
    state = clock_world()
    values, seams, holds = [], [], []
    for tick in range(ticks):
        action = ctrl.act(state)
        if not ctrl.holding:
            assert torch.equal(action[:, 1], state[:, 1])  # every item executes its own chunk
        values.append(action[0, 0].item())
        seams.append(ctrl.switched)
        holds.append(ctrl.holding)
        state = state + torch.tensor([1.0, 0.0])
    return values, seams, holds, policy


@pytest.mark.parametrize("name", ["naive", "bid", "hard_mask", "rtc", "rti"])
def test_async_strategies_execute_the_action_planned_for_each_tick_and_switch_d_ticks_after_requesting(name):
    values, seams, holds, _ = run_clock(name, d=2, s=3)
    assert values == [float(t) for t in range(30)]
    assert [t for t, seam in enumerate(seams) if seam] == list(range(5, 30, 3))
    assert not any(holds)


def test_rtc_future_chunk_starts_at_the_rolled_state_and_still_executes_one_planned_action_per_tick():
    values, seams, _, _ = run_clock("rtc_future", d=3, s=3)
    assert values == [float(t) for t in range(30)]
    assert [t for t, seam in enumerate(seams) if seam] == list(range(6, 30, 3))


def test_sync_holds_during_inference_then_executes_the_chunk_from_its_first_action():
    values, seams, holds, _ = run_clock("sync", d=2, s=3, ticks=13)
    # ticks 0-2 first chunk; request at 3, hold 3-4, chunk (planned at 3) from tick 5; request at 8 ...
    assert values == [0, 1, 2, HOLD, HOLD, 3, 4, 5, HOLD, HOLD, 8, 9, 10]
    assert [t for t, h in enumerate(holds) if h] == [3, 4, 8, 9]
    assert [t for t, seam in enumerate(seams) if seam] == [5, 10]


def test_zero_delay_replans_every_s_ticks_without_holding():
    for name in ("sync", "naive"):
        values, seams, holds, policy = run_clock(name, d=0, s=1, ticks=10)
        assert values == [float(t) for t in range(10)]
        assert not any(holds) and policy.calls == 10


def test_temporal_ensemble_of_agreeing_chunks_is_the_planned_action():
    values, _, _, _ = run_clock("ensemble", d=2, s=2)
    assert values == pytest.approx([float(t) for t in range(30)])


def test_temporal_ensemble_weights_older_chunks_by_exp_minus_m_j():
    ens = TemporalEnsemble(EnsembleConfig(m=math.log(2.0)))
    ens.add(torch.zeros(1, 4, 1), 0)
    ens.add(torch.ones(1, 4, 1), 1)
    assert ens.action(2).item() == pytest.approx(0.5 / 1.5)  # weights 1 (older) and 1/2
    assert ens.action(4).item() == 1.0  # the older chunk no longer covers tick 4


def test_bid_keeps_the_candidate_closest_to_the_previous_chunk_on_the_weighted_overlap():
    target = torch.zeros(2, 4, 1)
    candidates = torch.stack([torch.full((2, 4, 1), 2.0), torch.full((2, 4, 1), 0.5), torch.full((2, 4, 1), -1.0)], dim=1)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    chosen, index = select_coherent(candidates, target, weights, torch.tensor([True, False]))
    assert index.tolist() == [1, 0]
    assert chosen[0, 0, 0].item() == 0.5


def toy_step(state, action):
    return state + 0.1 * torch.cat([action, action[:, :1]], dim=1)


@pytest.mark.parametrize("family", ["flow", "diffusion"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_runs_with_both_policy_families(name, family):
    policy = small_policy(family, horizon=8, action_dim=2, state_dim=3, num_steps=5)
    config = StrategyConfig(name)
    config.bid.n_samples = 4
    ctrl = ChunkedController(policy, config, d=2, s=3, future_state_fn=rollout_with(toy_step),
                             hold_action=lambda st, last: torch.zeros_like(last),
                             generator=torch.Generator().manual_seed(0))
    state = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(10):
        action = ctrl.act(state)
        assert action.shape == (4, 2) and bool(torch.isfinite(action).all())
        state = toy_step(state, action)
    assert ctrl.requests == (3 if name == "sync" else 4)


def test_controller_refuses_horizons_outside_d_le_s_le_h_minus_d():
    with pytest.raises(ValueError):
        ChunkedController(ClockPolicy(8), StrategyConfig("rtc"), d=3, s=2)
    with pytest.raises(ValueError):
        ChunkedController(ClockPolicy(8), StrategyConfig("rtc"), d=3, s=6)


def test_unknown_strategy_name_is_refused():
    with pytest.raises(ValueError):
        StrategyConfig("greedy")


def test_dropping_finished_items_keeps_the_remaining_items_on_their_own_chunks():
    policy = ClockPolicy(8)
    ctrl = ChunkedController(policy, StrategyConfig("naive"), d=2, s=3)
    state = torch.stack([torch.zeros(3), torch.arange(3, dtype=torch.float32)], dim=1)
    for tick in range(12):
        if tick == 4:  # item 1 finished; keep items 0 and 2 (a request is in flight)
            ctrl.select(torch.tensor([0, 2]))
            state = state[[0, 2]]
        action = ctrl.act(state)
        assert action[:, 0].tolist() == [float(tick)] * state.shape[0]
        assert torch.equal(action[:, 1], state[:, 1])
        state = state + torch.tensor([1.0, 0.0])
