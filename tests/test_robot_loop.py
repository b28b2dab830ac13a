"""RobotLoop and ActionBuffer: what runs at which tick, without threads or sockets."""

from __future__ import annotations

import numpy as np
import pytest

from clients.action_buffer import ActionBuffer
from clients.robot_loop import ChunkReply, RobotLoop

A = 2


def chunk(values, a=A):
    return np.repeat(np.asarray(values, dtype=np.float32)[:, None], a, axis=1)


class RecordingRobot:
    def __init__(self):
        self.applied: list[np.ndarray] = []

    def observe(self):
        return {"state": np.zeros(3, dtype=np.float32)}

    def apply(self, action):
        self.applied.append(np.array(action))


class ScriptedLink:
    """A network that answers request k after ``delays[k]`` ticks with ``make_chunk(k, tick)``."""

    def __init__(self, loop_ref, delays, horizon=8, s=4, d=None):
        self.loop_ref = loop_ref
        self.delays = delays
        self.horizon = horizon
        self.s = s
        self.d = d
        self.pending: list[tuple[int, ChunkReply]] = []
        self.sent: list[tuple[int, int, dict | None]] = []
        self.abandoned: list[int] = []
        self.observations: list[dict] = []

    def request(self, request_id, tick, observation, report):
        self.sent.append((request_id, tick, report))
        self.observations.append(observation)
        delay = self.delays[min(request_id, len(self.delays) - 1)]
        actions = chunk(np.arange(self.horizon) + 100 * (request_id + 1))
        d = self.d if self.d is not None else delay
        self.pending.append((tick + delay, ChunkReply(request_id, actions, start_tick=tick, d=d, s=self.s)))

    def poll(self):
        now = self.loop_ref().tick
        ready = [r for t, r in self.pending if t <= now]
        self.pending = [(t, r) for t, r in self.pending if t > now]
        return ready

    def abandon(self, request_id):
        self.abandoned.append(request_id)


def make_loop(delays, timeout_ticks=50, **link_kwargs):
    robot = RecordingRobot()
    holder = {}
    link = ScriptedLink(lambda: holder["loop"], delays, **link_kwargs)
    loop = RobotLoop(robot, link, action_dim=A, timeout_ticks=timeout_ticks)
    holder["loop"] = loop
    return loop, link, robot


def test_buffer_rejects_a_chunk_of_the_wrong_action_dimension():
    with pytest.raises(ValueError):
        ActionBuffer(A).merge(np.zeros((4, A + 1)), start_tick=0, now=0)


def test_loop_starts_the_first_chunk_from_its_beginning_after_holding():
    loop, link, robot = make_loop(delays=[2, 2, 2, 2])
    for _ in range(8):
        loop.step()
    # request 0 at tick 0 arrives at tick 2; the robot held at ticks 0 and 1, so nothing of
    # the plan ran yet and tick 2 executes its first action
    assert loop.stats.warmup_ticks == 2
    assert robot.applied[0][0] == 100
    assert loop.stats.underruns == 0


def test_loop_switches_mid_chunk_to_the_index_of_the_current_tick():
    loop, link, robot = make_loop(delays=[1, 2, 2], s=4)
    for _ in range(8):
        loop.step()
    # request 1 is sent at tick 5 (start tick 1 + s) and arrives at tick 7 while the
    # first plan is running: tick 7 executes its index 2
    assert robot.applied[-1][0] == 202


def test_loop_requests_again_after_s_actions_of_the_current_chunk():
    loop, link, _ = make_loop(delays=[1, 1, 1], s=3)
    for _ in range(8):
        loop.step()
    # chunk 0 starts running at tick 1 (the robot held at tick 0), so the next request goes
    # at 1 + s = 4; chunk 1 (start tick 4) runs from its index 1 at tick 5: next at 4 + s = 7
    assert [tick for _, tick, _ in link.sent] == [0, 4, 7]


def test_loop_reports_when_the_previous_chunk_arrived():
    loop, link, _ = make_loop(delays=[2, 2], s=4)
    for _ in range(7):
        loop.step()
    # the robot held until the chunk came, so its index 0 ran at tick 2, not at tick 0
    report = dict(link.sent[1][2])
    assert report.pop("rtt_ms") >= 0.0  # on this machine's clock; the server subtracts its own time
    assert report == {"request_id": 0, "tick_sent": 0, "tick_arrived": 2, "plan_start": 2}


def test_loop_counts_an_underrun_and_holds_the_last_action_when_the_plan_runs_out():
    loop, link, robot = make_loop(delays=[1, 30], horizon=4, s=4, timeout_ticks=100)
    for _ in range(7):
        loop.step()
    # the chunk runs at ticks 1..4; ticks 5 and 6 have no plan
    assert loop.stats.underruns == 2
    np.testing.assert_array_equal(robot.applied[-1], robot.applied[-3])


def test_a_reply_after_the_loop_gave_up_on_it_is_never_executed():
    loop, link, robot = make_loop(delays=[1, 20, 1], horizon=50, s=2, timeout_ticks=5)
    for _ in range(30):
        loop.step()
    assert link.abandoned == [1]
    assert loop.stats.timeouts == 1
    assert loop.stats.late_replies_dropped == 1
    executed = {int(a[0]) // 100 for a in robot.applied}
    assert 2 not in executed  # request 1's actions (200..) never ran


def test_a_warmup_spike_skips_no_actions_afterwards():
    # first call 10x slower than the rest; the server's d for later calls is the true delay
    loop, link, _ = make_loop(delays=[20, 2, 2, 2, 2, 2, 2, 2], horizon=16, s=4, d=2)
    for _ in range(60):
        loop.step()
    assert loop.stats.warmup_ticks == 20
    assert loop.stats.skipped_actions == 0
    assert loop.stats.underruns == 0


def test_loop_measures_delay_in_ticks_from_request_to_arrival():
    loop, _, _ = make_loop(delays=[3, 3, 3], s=4)
    for _ in range(12):
        loop.step()
    assert set(loop.stats.delay_ticks) == {3}


class FakeClock:
    """Time that passes only when the code under test sleeps or a robot's tick takes time."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.now += seconds


def timed(robot, clock, tick_cost_s, slow=None):
    """Record the clock at each tick's observation; each tick then takes ``tick_cost_s``
    (``slow[k]`` for tick k)."""
    starts = []
    observe = robot.observe

    def timed_observe():
        starts.append(clock())
        clock.now += (slow or {}).get(len(starts) - 1, tick_cost_s)
        return observe()

    robot.observe = timed_observe
    return starts


def test_run_ticks_on_a_drift_free_schedule():
    clock = FakeClock()
    loop, _, robot = make_loop(delays=[1] * 100)
    starts = timed(robot, clock, tick_cost_s=0.004, slow={3: 0.05})  # tick 3 overruns by 1.5 periods
    loop.run(ticks=10, clock=clock, sleep=clock.sleep)
    # tick k is due at 100 + k/50 s; the ticks after the slow one run at once until on time again
    expected = [100.0, 100.02, 100.04, 100.06, 100.11, 100.114, 100.12, 100.14, 100.16, 100.18]
    assert starts == pytest.approx(expected)
    assert list(loop.stats.jitter_ms) == pytest.approx([0, 0, 0, 0, 30, 14, 0, 0, 0, 0])


def test_run_stops_before_the_first_tick_due_after_its_duration():
    clock = FakeClock()
    loop, _, robot = make_loop(delays=[1] * 100)
    timed(robot, clock, tick_cost_s=0.001)
    loop.run(duration_s=0.5, clock=clock, sleep=clock.sleep)
    assert loop.tick == 25


def test_an_episode_boundary_drops_the_plan_and_asks_for_a_fresh_chunk_with_reset():
    loop, link, robot = make_loop(delays=[1, 2, 2, 2], horizon=16, s=8)
    ends_at = {5}
    robot.take_episode_boundary = lambda: loop.tick in ends_at
    for _ in range(10):
        loop.step()
    assert [tick for _, tick, _ in link.sent] == [0, 6]
    assert link.observations[1].get("reset") is True
    assert loop.buffer.remaining(loop.tick) > 0  # the new episode's chunk, not the old plan
    assert robot.applied[-1][0] >= 200


def test_a_request_the_server_failed_is_asked_again_on_the_same_tick():
    from clients.robot_loop import RequestFailed

    loop, link, _ = make_loop(delays=[1, 50, 1], s=4, timeout_ticks=100)
    for _ in range(6):
        loop.step()
    assert [tick for _, tick, _ in link.sent] == [0, 5]
    link.pending = [(6, RequestFailed(1, "deadline_exceeded"))]
    loop.step()
    assert [tick for _, tick, _ in link.sent] == [0, 5, 6]
    assert loop.stats.failures == 1 and loop.stats.timeouts == 0


class SessionLink:
    """The server's /v1/policy session logic (sans I/O) behind an in-memory network whose
    round trip for request k is ``delays[k]`` ticks."""

    def __init__(self, loop_ref, delays, horizon=16, **hello):
        from stream.realtime_session import RealtimeSessionState
        from stream.registry import robot_observation_spec

        self.state = RealtimeSessionState(robot_observation_spec(3), horizon=horizon, action_dim=A, control_hz=50.0)
        self.state.hello({"type": "hello", "strategy": "rtc", **hello})
        self.loop_ref, self.delays, self.horizon = loop_ref, delays, horizon
        self.pending = []
        self.replies = []

    def request(self, request_id, tick, observation, report):
        message = {"type": "observation", "request_id": request_id, "tick": tick, **observation}
        if report is not None:
            message["report"] = report
        prepared = self.state.observation(message)
        fields = self.state.completed(prepared, chunk(np.arange(self.horizon) + tick))
        reply = ChunkReply(request_id, fields["actions"], fields["start_tick"], fields["d"], fields["s"])
        self.replies.append(reply)
        self.pending.append((tick + self.delays[min(request_id, len(self.delays) - 1)], reply))

    poll = ScriptedLink.poll

    def abandon(self, request_id):
        raise AssertionError("nothing should time out")


def test_a_server_warmup_spike_inflates_neither_d_nor_skips_actions():
    holder = {}
    link = SessionLink(lambda: holder["loop"], delays=[20] + [2] * 40)
    robot = RecordingRobot()
    loop = RobotLoop(robot, link, action_dim=A)
    holder["loop"] = loop
    for _ in range(30):  # the slow first call, then the first normal round trip, whose
        loop.step()  # length the server cannot know yet (it guesses d = 0)
    skipped_during_warmup = loop.stats.skipped_actions
    for _ in range(120):
        loop.step()
    assert loop.stats.skipped_actions == skipped_during_warmup
    assert loop.stats.underruns == 0
    assert max(reply.d for reply in link.replies[2:]) <= 2  # the 20-tick first call is not counted


def test_run_loops_ticks_every_robot_on_its_own_staggered_schedule():
    from clients.robot_loop import run_loops

    clock = FakeClock()
    made = [make_loop(delays=[1] * 100) for _ in range(4)]
    starts = [timed(robot, clock, tick_cost_s=0.001) for _, _, robot in made]
    run_loops([loop for loop, _, _ in made], duration_s=0.1, clock=clock, sleep=clock.sleep)
    # robot i of 4 ticks at 100 + i/200 + k/50 s
    for i, robot_starts in enumerate(starts):
        assert robot_starts == pytest.approx([100.0 + i * 0.005 + k * 0.02 for k in range(5)])


def test_stats_since_a_mark_count_only_what_came_after_it():
    import copy

    loop, _, _ = make_loop(delays=[2] * 10, s=4)
    for _ in range(8):
        loop.step()
    mark = copy.deepcopy(loop.stats)
    for _ in range(8):
        loop.step()
    later = loop.stats.since(mark)
    assert later.ticks == 8 and later.warmup_ticks == 0
    assert later.requests == loop.stats.requests - mark.requests
    assert list(later.delay_ticks) == list(loop.stats.delay_ticks)[len(mark.delay_ticks):]


def test_an_occasional_late_reply_does_not_make_the_server_freeze_actions_the_robot_never_waited_for():
    # Served, a share of replies lands a tick late. If one late reply sets d for the next
    # requests, the server freezes d actions to the old plan while the reply lands after
    # one: the robot executes stale copies in the ticks it could have acted fresh.
    holder = {}
    delays = [1] + ([1] * 7 + [2]) * 40
    link = SessionLink(lambda: holder["loop"], delays=delays, s=1)
    robot = RecordingRobot()
    loop = RobotLoop(robot, link, action_dim=A)
    holder["loop"] = loop
    for _ in range(200):
        loop.step()
    assumed = [(reply.d, delays[reply.request_id]) for reply in link.replies[2:]]  # after the warm-up round trip
    assert len(assumed) > 50
    assert [pair for pair in assumed if pair[0] > pair[1]] == []


def test_the_loop_reports_the_execution_horizons_it_was_given():
    loop, _, _ = make_loop(delays=[1] * 50, s=3)
    for _ in range(40):
        loop.step()
    summary = loop.stats.summary()
    assert loop.stats.chunks > 5
    assert summary["s_p50"] == 3 and summary["s_max"] == 3
    assert summary["s_above_d"] == loop.stats.chunks  # d = 1 every time: each s = 3 was above max(d, 1)
