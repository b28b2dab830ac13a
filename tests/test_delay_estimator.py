"""DelayEstimator: d in ticks from executed round trips, warm-up robust, clamped d <= s <= H - d."""

import numpy as np
import pytest
import torch

from chunking.delay import DelayEstimator, DelayEstimatorConfig, batch_delays, clamp_horizons
from chunking.merge import merge_chunk


def estimator(**kw):
    return DelayEstimator(DelayEstimatorConfig(horizon=kw.pop("horizon", 16), **kw))


def test_a_slow_first_call_is_not_counted():
    est = estimator(warmup=1)
    for ticks in (21, 2, 2, 1):
        est.observe(ticks)
    assert est.d == 2


def test_a_later_spike_is_forgotten_after_the_window():
    est = estimator(warmup=0, window=4)
    for ticks in (1, 6, 1, 1, 1):
        est.observe(ticks)
    assert est.d == 6
    est.observe(1)
    assert est.d == 1


def test_a_windowed_percentile_ignores_an_isolated_spike():
    est = estimator(warmup=0, window=10, quantile=0.8)
    for ticks in (2, 2, 3, 2, 12, 2, 3, 2, 2, 2):
        est.observe(ticks)
    assert est.d == 3


def test_initial_value_is_used_until_a_round_trip_is_counted():
    est = estimator(warmup=1, initial=2)
    est.observe(30)
    assert est.d == 2


def test_round_trip_is_the_number_of_ticks_executed_meanwhile():
    est = estimator(warmup=0)
    est.observe_round_trip(request_tick=40, merged_tick=43)
    assert est.d == 3


@pytest.mark.parametrize(
    "d, s, expected",
    [(1, 7, (1, 7)), (3, 1, (3, 3)), (2, 8, (2, 6)), (6, 2, (4, 4)), (0, 0, (0, 1)), (9, 9, (4, 4))],
)
def test_clamp_keeps_d_le_s_le_h_minus_d(d, s, expected):
    assert clamp_horizons(d, s, 8) == expected
    d_t, s_t = clamp_horizons(torch.tensor([d]), torch.tensor([s]), 8)
    assert (int(d_t), int(s_t)) == expected


def test_estimate_is_clamped_to_half_the_horizon():
    est = estimator(horizon=8, warmup=0)
    est.observe(7)
    assert est.d == 4
    assert est.horizons(2) == (4, 4)


def test_sessions_have_independent_estimates():
    a, b = estimator(warmup=0), estimator(warmup=0)
    for _ in range(3):
        a.observe(5)
    b.observe(1)
    d, s = batch_delays([a, b], [4, 4])
    assert d.tolist() == [5, 1] and s.tolist() == [5, 4]


def test_warm_up_spike_causes_no_skipped_actions_afterwards():
    """A control loop (H = 16, s = 4) whose first request takes 10 ticks, later ones 1-2.

    Every chunk's action i carries the tick it was planned for (request tick + i), so the
    executed sequence shows any skipped or repeated action. Merging by the reply's start
    tick executes exactly one planned action per tick; the estimator's d returns to the
    real delay right after the spike.
    """
    horizon, s = 16, 4
    est = estimator(horizon=horizon, warmup=1)
    round_trips = iter([10, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1])

    def plan(tick):
        return (tick + np.arange(horizon, dtype=np.float32)).reshape(horizon, 1)

    active = merge_chunk(None, plan(0), 0, 0).plan
    in_flight = None  # (chunk, request tick, arrival tick)
    next_request, executed, conditioned = 0, [], []
    for tick in range(60):
        if in_flight is not None and tick == in_flight[2]:
            chunk, req, _ = in_flight
            active = merge_chunk(active, chunk, req, tick).plan
            est.observe_round_trip(req, tick)
            in_flight = None
        if in_flight is None and tick >= next_request:
            conditioned.append(est.d)
            in_flight = (plan(tick), tick, tick + next(round_trips))
            next_request = tick + s
        executed.append(float(active.action_at(tick)[0]))
    assert executed == [float(t) for t in range(60)]
    assert max(conditioned[2:]) <= 2
