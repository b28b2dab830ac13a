"""ExecutionHorizon: s = max(d, 1) with headroom, larger under load, back again when it falls."""

import pytest

from stream.horizon import ExecutionHorizon, HorizonConfig, ServedRequest

H = 16
TICK = 0.02
BUDGET = (H - 1 - 2) * TICK  # a request made after one action, with the 2-tick margin: 260 ms


def served(server_ms, budget_s=BUDGET, held_ms=0.0, degraded=False):
    return ServedRequest(server_s=server_ms / 1000.0, held_s=held_ms / 1000.0, budget_s=budget_s, tick_s=TICK,
                         degraded=degraded)


def controller(**kw):
    return ExecutionHorizon(HorizonConfig(horizon=H, **kw))


def test_with_headroom_s_is_max_d_1():
    horizon = controller()
    for _ in range(50):
        horizon.served(served(8.0))
    assert [horizon.s(d) for d in (0, 1, 2, 5)] == [1, 1, 2, 5]


def test_replies_near_their_budget_make_s_grow_one_tick_per_cooldown():
    horizon = controller(cooldown=4)
    grown = []
    for _ in range(12):
        horizon.served(served(150.0))  # 58% of the budget
        grown.append(horizon.s(1))
    assert grown == [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]


def test_refused_requests_make_s_grow():
    horizon = controller()
    horizon.refused()
    assert horizon.s(1) == 2


def test_degraded_replies_make_s_grow():
    horizon = controller()
    horizon.served(served(8.0, degraded=True))
    assert horizon.s(1) == 2


def test_time_held_for_batching_is_not_load():
    horizon = controller()
    for _ in range(20):
        horizon.served(served(200.0, held_ms=190.0))
    assert horizon.s(1) == 1


def test_s_shrinks_back_to_max_d_1_once_load_falls():
    horizon = controller(cooldown=1, recover_after=16)
    for _ in range(3):
        horizon.refused()
    assert horizon.s(1) == 4
    shrunk = []
    for _ in range(48):
        horizon.served(served(8.0))
        shrunk.append(horizon.s(1))
    assert shrunk[14] == 4 and shrunk[15] == 3 and shrunk[31] == 2 and shrunk[47] == 1


def test_a_reply_between_the_thresholds_neither_grows_nor_shrinks_s():
    horizon = controller(cooldown=1, recover_after=2)
    horizon.refused()
    for _ in range(10):
        horizon.served(served(0.35 * BUDGET * 1000.0))
    assert horizon.s(1) == 2


def test_s_never_grows_past_what_the_budget_affords():
    horizon = controller(cooldown=1)
    for _ in range(20):
        horizon.served(served(150.0, budget_s=0.2))  # 7.5 ticks of server time
    # a request after s actions has H - s - 2 ticks left: it must still cover 8 ticks and one spare
    assert horizon.s(1) == H - 2 - 8 - 1


def test_s_stays_within_s_max_and_h_minus_d():
    horizon = controller(cooldown=1, s_max=6)
    for _ in range(20):
        horizon.refused()
    assert horizon.s(1) == 6
    assert horizon.s(7) == 7  # never below max(d, 1), even past s_max


def test_s_stays_within_h_minus_d():
    horizon = controller(cooldown=1, s_max=12)
    for _ in range(20):
        horizon.refused()
    assert horizon.s(6) == H - 6


def test_invalid_thresholds_are_refused():
    with pytest.raises(ValueError):
        HorizonConfig(horizon=H, grow_above=0.2, shrink_below=0.3)
