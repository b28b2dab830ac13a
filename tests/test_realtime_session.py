"""The /v1/policy session logic without a socket: hello, the shifted previous chunk, d, s, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from stream.protocol import ProtocolError
from stream.realtime_session import RealtimeSessionState
from stream.registry import robot_observation_spec

H, A, S = 16, 2, 3


def session(**hello):
    state = RealtimeSessionState(robot_observation_spec(S), horizon=H, action_dim=A, control_hz=50.0)
    state.hello({"type": "hello", **hello})
    return state


def observation(request_id, tick, **extra):
    return {"type": "observation", "request_id": request_id, "tick": tick,
            "state": np.zeros(S, dtype=np.float32), **extra}


def ramp_chunk(start=0.0):
    return np.repeat((start + np.arange(H, dtype=np.float32))[:, None], A, axis=1)


def test_hello_rejects_an_unknown_strategy():
    state = RealtimeSessionState(robot_observation_spec(S), horizon=H, action_dim=A, control_hz=50.0)
    with pytest.raises(ProtocolError) as err:
        state.hello({"type": "hello", "strategy": "teleport"})
    assert err.value.close_code == 1008


def test_hello_rejects_an_execution_horizon_longer_than_the_chunk():
    state = RealtimeSessionState(robot_observation_spec(S), horizon=H, action_dim=A, control_hz=50.0)
    with pytest.raises(ProtocolError):
        state.hello({"type": "hello", "s": H + 1})


def test_first_observation_is_sampled_plainly_with_a_chunk_long_budget():
    state = session()
    prepared = state.observation(observation(0, 0))
    assert "prev_chunk" not in prepared.inputs
    assert prepared.budget_s == pytest.approx(H / 50.0)


def test_the_previous_chunk_is_shifted_to_the_observation_tick():
    state = session()
    first = state.observation(observation(0, 10))
    state.completed(first, ramp_chunk())
    prepared = state.observation(observation(1, 14))
    np.testing.assert_array_equal(prepared.inputs["prev_chunk"][:12, 0], np.arange(4, 16))
    assert prepared.inputs["prev_chunk"].shape == (H, A)


def test_reported_round_trips_set_d_after_the_warmup_one():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    warmup = state.observation(observation(1, 12, report={"request_id": 0, "tick_sent": 0, "tick_arrived": 12}))
    state.completed(warmup, ramp_chunk())
    state.completed(state.observation(observation(2, 16, report={"request_id": 1, "tick_sent": 12, "tick_arrived": 15})),
                    ramp_chunk())
    prepared = state.observation(observation(3, 20))
    assert prepared.d == 3
    assert prepared.d <= prepared.s <= H - prepared.d


def test_budget_runs_until_the_robot_would_run_out_of_actions_less_the_margin():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    prepared = state.observation(observation(1, 6))
    assert prepared.budget_s == pytest.approx((H - 6 - 2) / 50.0)


def test_reset_forgets_the_previous_chunk():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    prepared = state.observation(observation(1, 4, reset=True))
    assert "prev_chunk" not in prepared.inputs


def test_naive_and_sync_strategies_never_send_a_previous_chunk():
    for strategy in ("naive", "sync"):
        state = session(strategy=strategy)
        state.completed(state.observation(observation(0, 0)), ramp_chunk())
        assert "prev_chunk" not in state.observation(observation(1, 4)).inputs


def test_sync_asks_for_the_next_chunk_only_after_the_whole_chunk():
    state = session(strategy="sync")
    assert state.observation(observation(0, 0)).s == H


def test_a_stateless_client_may_send_its_plan_back():
    state = session()
    prepared = state.observation(observation(0, 5, prev_chunk=ramp_chunk(100.0)[:8], prev_start_tick=3))
    np.testing.assert_array_equal(prepared.inputs["prev_chunk"][:6, 0], np.arange(102, 108))


def test_a_report_from_the_future_is_refused():
    state = session()
    with pytest.raises(ProtocolError):
        state.observation(observation(0, 5, report={"request_id": 0, "tick_sent": 2, "tick_arrived": 9}))


def test_an_observation_without_a_tick_is_refused():
    state = session()
    message = observation(0, 0)
    del message["tick"]
    with pytest.raises(ProtocolError) as err:
        state.observation(message)
    assert err.value.code == "missing_field"


def test_batching_leaves_room_for_the_network_time_the_client_measured():
    state = session(batch_hold=True)
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.010)
    for request_id, tick in ((1, 4), (2, 8), (3, 12)):
        # every round trip: 5 ticks, 90 ms on the client's clock, 10 ms of it in the server
        report = {"request_id": request_id - 1, "tick_sent": tick - 4, "tick_arrived": tick + 1, "rtt_ms": 90.0}
        prepared = state.observation(observation(request_id, tick + 1, report=report))
        state.completed(prepared, ramp_chunk(), server_s=0.010)
    prepared = state.observation(observation(4, 17))
    assert prepared.d == 5
    # 5 ticks (100 ms) less 80 ms of network less a 3 ms guard: the server may take 17 ms
    assert prepared.target_s == pytest.approx(0.017)


def test_no_batching_hold_without_a_plan_or_before_the_network_time_is_known():
    state = session(batch_hold=True)
    first = state.observation(observation(0, 0))
    assert first.target_s is None  # the robot has nothing to execute: serve it at once
    state.completed(first, ramp_chunk())
    assert state.observation(observation(1, 4)).target_s is None  # network time unknown: a tick


def test_a_chunk_that_started_late_on_the_robot_is_shifted_from_where_it_really_started():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    # the robot held until tick 3, so the chunk's index 0 ran at tick 3: at tick 7 it runs index 4
    report = {"request_id": 0, "tick_sent": 0, "tick_arrived": 3, "plan_start": 3}
    prepared = state.observation(observation(1, 7, report=report))
    assert prepared.inputs["prev_chunk"][0, 0] == 4


def test_a_session_may_opt_out_of_batching_holds():
    state = session(batch_hold=False)
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    report = {"request_id": 0, "tick_sent": 0, "tick_arrived": 1, "rtt_ms": 1.0}
    state.completed(state.observation(observation(1, 4, report=report)), ramp_chunk(), server_s=0.0005)
    assert state.observation(observation(2, 8)).target_s is None


def test_time_held_for_batching_does_not_count_toward_the_delay():
    state = session(batch_hold=True)
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.005)
    warmup = {"request_id": 0, "tick_sent": 0, "tick_arrived": 1, "rtt_ms": 6.0}
    state.completed(state.observation(observation(1, 4, report=warmup)), ramp_chunk(), server_s=0.005)
    first = {"request_id": 1, "tick_sent": 4, "tick_arrived": 5, "rtt_ms": 6.0}
    held = state.observation(observation(2, 8, report=first))
    assert held.d == 1 and held.target_s == pytest.approx(0.016)
    # the engine held it for its whole target, so it landed a tick later than it had to
    state.completed(held, ramp_chunk(), server_s=0.021, queue_s=0.016)
    late = {"request_id": 2, "tick_sent": 8, "tick_arrived": 10, "rtt_ms": 22.0}
    assert state.observation(observation(3, 12, report=late)).d == 1


def test_a_hold_that_pushed_a_reply_past_a_tick_boundary_does_not_count_toward_the_delay():
    state = session(batch_hold=True)
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.020)
    tick, request_id = 0, 1
    # first, unheld 2-tick round trips (26 ms, 20 of them in the server): d = 2, and the
    # server may hold a request for 40 - 6 - 3 = 31 ms
    for _ in range(3):
        report = {"request_id": request_id - 1, "tick_sent": tick, "tick_arrived": tick + 2, "rtt_ms": 26.0}
        tick += 2
        state.completed(state.observation(observation(request_id, tick, report=report)), ramp_chunk(), server_s=0.020)
        request_id += 1
    prepared = state.observation(observation(request_id, tick + 2))
    assert prepared.d == 2 and prepared.target_s == pytest.approx(0.031)
    # then every request is held 8 ms: a reply that would have landed at 18 ms, one tick,
    # lands at 26 ms, two ticks
    for _ in range(8):
        state.completed(prepared, ramp_chunk(), server_s=0.020, queue_s=0.008)
        report = {"request_id": request_id, "tick_sent": tick + 2, "tick_arrived": tick + 4, "rtt_ms": 26.0}
        tick += 2
        request_id += 1
        prepared = state.observation(observation(request_id, tick + 2, report=report))
    assert prepared.d == 1


def test_one_late_reply_among_on_time_ones_leaves_d_alone():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk())
    tick = 0
    for request_id, ticks in enumerate((1, 1, 1, 1, 2, 1, 1, 1), start=1):  # the first is the warm-up one
        report = {"request_id": request_id - 1, "tick_sent": tick, "tick_arrived": tick + ticks}
        tick += ticks
        state.completed(state.observation(observation(request_id, tick, report=report)), ramp_chunk())
    assert state.observation(observation(9, tick + 1)).d == 1


def test_with_headroom_the_execution_horizon_is_the_smallest_rtc_admits():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.004)
    report = {"request_id": 0, "tick_sent": 0, "tick_arrived": 1}
    assert state.observation(observation(1, 1, report=report)).s == 1


def test_the_execution_horizon_follows_d():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.004)
    tick = 0
    for request_id in range(1, 4):
        report = {"request_id": request_id - 1, "tick_sent": tick, "tick_arrived": tick + 3}
        tick += 3
        state.completed(state.observation(observation(request_id, tick, report=report)), ramp_chunk(), server_s=0.004)
    prepared = state.observation(observation(4, tick + 3))
    assert (prepared.d, prepared.s) == (3, 3)


def test_requests_the_engine_refuses_make_the_execution_horizon_grow():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.004)
    refused = state.observation(observation(1, 1))
    state.failed(refused, "deadline_exceeded")
    assert state.observation(observation(2, 1)).s == 2


def test_a_superseded_request_is_not_load():
    state = session()
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.004)
    state.failed(state.observation(observation(1, 1)), "superseded")
    assert state.observation(observation(2, 1)).s == 1


def test_an_execution_horizon_pinned_in_hello_is_kept_under_load():
    state = session(s=3)
    state.completed(state.observation(observation(0, 0)), ramp_chunk(), server_s=0.004)
    for request_id in range(1, 20):
        state.failed(state.observation(observation(request_id, 1)), "deadline_exceeded")
    assert state.observation(observation(20, 1)).s == 3


def test_the_resolved_strategy_has_no_minimum_execution_horizon_any_more():
    assert "s_min" not in session().settings.describe()
