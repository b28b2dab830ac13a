"""/v1/policy end to end: a real server process on loopback, RobotLoop and WebsocketPolicyLink.

The stand-in policy answers ``actions[h] = state + (h + 1) * 0.01 * tanh(state)``, so every
executed action can be traced back to a chunk the server computed for this robot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from clients.server_process import ServerProcess
from clients.policy_link import WebsocketPolicyLink
from clients.robot_loop import RobotLoop
from stream.wire import packb, unpackb
from policies.standin import S, standin_actions

STATE = np.linspace(-1.0, 1.0, S).astype(np.float32)
CHUNK = standin_actions(STATE[None])[0]


class ConstantRobot:
    def __init__(self):
        self.applied = []

    def observe(self):
        return {"state": STATE}

    def apply(self, action):
        self.applied.append(np.array(action))


def wait_for(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def server():
    with ServerProcess(["--model", "standin", "--standin-ms", "5"]) as process:
        yield process


def test_hello_gets_ready_with_the_model_and_the_resolved_strategy(server):
    with connect(server.url("/v1/policy")) as ws:
        ws.send(packb({"type": "hello", "strategy": "rtc", "control_hz": 50}))
        ready = unpackb(ws.recv())
    assert ready["type"] == "ready"
    assert ready["model"]["horizon"] == 50 and ready["model"]["action_dim"] == 14
    assert ready["strategy"]["strategy"] == "rtc"


def test_text_frames_get_text_replies(server):
    with connect(server.url("/v1/policy")) as ws:
        ws.send(json.dumps({"type": "hello"}))
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send(json.dumps({"type": "observation", "request_id": 1, "tick": 0, "state": STATE.tolist()}))
        reply = json.loads(ws.recv())
    assert reply["type"] == "chunk" and reply["start_tick"] == 0
    np.testing.assert_allclose(np.array(reply["actions"]), CHUNK, rtol=1e-6)


def test_an_observation_before_hello_is_an_unknown_type_and_closes_with_1008(server):
    with connect(server.url("/v1/policy")) as ws:
        ws.send(packb({"type": "observation", "request_id": 0, "tick": 0, "state": STATE}))
        error = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert (error["type"], error["code"]) == ("error", "unknown_type")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008  # the server's close frame


def test_robot_loop_executes_only_actions_of_its_own_chunks(server):
    robot = ConstantRobot()
    link = WebsocketPolicyLink(server.url("/v1/policy"), {"strategy": "rtc"})
    try:
        link.wait_ready()
        loop = RobotLoop(robot, link, action_dim=14, hz=100.0)
        loop.run(ticks=150)
    finally:
        link.close()
    assert loop.stats.chunks >= 2
    for action in robot.applied:
        assert np.abs(CHUNK - action).max(axis=1).min() < 1e-5


@dataclass(frozen=True)
class Applied:
    action: np.ndarray
    held: bool  # the loop counted this tick as an underrun: it had no planned action


class TracingRobot:
    """A robot whose state the test sets; it records every applied action and whether the
    loop (``self.loop``, set once it exists) counted that tick as an underrun."""

    def __init__(self, state: np.ndarray):
        self.state = state
        self.loop: RobotLoop | None = None
        self.applied: list[Applied] = []
        self._underruns = 0

    def observe(self):
        return {"state": self.state}

    def apply(self, action):
        underruns = self.loop.stats.underruns  # the loop counts an underrun before applying
        self.applied.append(Applied(np.array(action), held=underruns > self._underruns))
        self._underruns = underruns


def is_row_of(action: np.ndarray, chunk: np.ndarray) -> bool:
    return bool(np.abs(chunk - action).max(axis=1).min() < 1e-5)


def test_robot_holds_its_last_action_while_the_server_restarts_then_resumes_from_a_fresh_chunk(server):
    after_state = STATE + 0.5  # the robot moved while the server was down
    chunk_after = standin_actions(after_state[None])[0]
    robot = TracingRobot(STATE)
    link = WebsocketPolicyLink(server.url("/v1/policy"), {"strategy": "rtc"}, backoff_s=(0.05, 0.2))
    try:
        link.wait_ready()
        loop = robot.loop = RobotLoop(robot, link, action_dim=14, hz=100.0, timeout_ticks=10)
        loop.start()
        assert wait_for(lambda: loop.stats.chunks >= 2)
        server.stop()
        assert wait_for(lambda: loop.stats.underruns > 0)  # out of plan: holding
        robot.state = after_state  # every chunk computed from now on is for this state
        server.start()
        assert wait_for(lambda: sum(is_row_of(a.action, chunk_after) for a in robot.applied) > 20)
    finally:
        loop.stop()
        link.close()
    applied = list(robot.applied)
    resumed = next(i for i, a in enumerate(applied) if is_row_of(a.action, chunk_after))
    assert all(is_row_of(a.action, CHUNK) for a in applied[:resumed])  # its own plan, or holding it
    assert sum(a.held for a in applied[:resumed]) >= 10  # held through the outage ...
    for previous, tick in zip(applied, applied[1:]):
        if tick.held:  # ... by repeating the last action applied
            assert np.array_equal(tick.action, previous.action)
    assert all(is_row_of(a.action, chunk_after) for a in applied[resumed:])  # then only the fresh chunk
    assert link.connects >= 2


def test_replies_to_abandoned_requests_are_never_executed():
    with ServerProcess(["--model", "standin", "--standin-ms", "300"]) as slow:
        robot = ConstantRobot()
        link = WebsocketPolicyLink(slow.url("/v1/policy"), {"strategy": "rtc", "budget_ms": 2000})
        try:
            link.wait_ready()
            loop = RobotLoop(robot, link, action_dim=14, hz=100.0, timeout_ticks=5,
                             on_underrun=lambda last: None)
            loop.run(ticks=100)
        finally:
            link.close()
    assert loop.stats.timeouts >= 3
    assert loop.stats.chunks == 0
    assert robot.applied == []


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
def test_openpi_broker_at_root_and_a_realtime_robot_share_one_trained_policy_server():
    from openpi_client.action_chunk_broker import ActionChunkBroker
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from clients.sim_robot import SimRobot

    with ServerProcess(["--model", "whack"]) as whack:
        link = WebsocketPolicyLink(whack.url("/v1/policy"), {"strategy": "rtc", "future_state": True})
        try:
            meta = link.wait_ready()["model"]
            realtime_robot = SimRobot("whack", seed=1)
            loop = RobotLoop(realtime_robot, link, action_dim=meta["action_dim"], hz=50.0,
                             on_underrun=realtime_robot.hold_action)
            loop.start()
            policy = WebsocketClientPolicy("127.0.0.1", whack.port)
            assert policy.get_server_metadata()["action_horizon"] == meta["horizon"] == 16
            broker = ActionChunkBroker(policy, action_horizon=8)  # synchronous chunking
            sync_robot = SimRobot("whack", seed=2)
            for _ in range(40):
                action = broker.infer(sync_robot.observe())["actions"]
                assert action.shape == (2,) and np.isfinite(action).all()
                sync_robot.apply(action)
            assert wait_for(lambda: loop.stats.chunks > 5)
        finally:
            loop.stop()
            link.close()


def test_a_request_the_server_cannot_answer_in_time_fails_fast_instead_of_timing_out():
    with ServerProcess(["--model", "standin", "--standin-ms", "50"]) as slow:
        robot = ConstantRobot()
        link = WebsocketPolicyLink(slow.url("/v1/policy"), {"strategy": "rtc", "budget_ms": 5})
        try:
            link.wait_ready()
            loop = RobotLoop(robot, link, action_dim=14, hz=100.0, timeout_ticks=50,
                             on_underrun=lambda last: None)
            loop.run(ticks=60)
        finally:
            link.close()
    assert loop.stats.failures >= 3  # deadline_exceeded, each asked again at once
    assert loop.stats.timeouts == 0
    assert link.last_error["code"] == "deadline_exceeded"


def test_metrics_report_the_execution_horizon_of_every_chunk():
    from server_harness import ServerThread, metric_value, standin

    with ServerThread([standin(1)]) as server:
        with connect(server.url + "v1/policy") as ws:
            ws.send(packb({"type": "hello", "strategy": "rtc", "s": 3}))
            assert unpackb(ws.recv())["type"] == "ready"
            for request_id, tick in enumerate((0, 3, 6)):
                ws.send(packb({"type": "observation", "request_id": request_id, "tick": tick, "state": STATE}))
                assert unpackb(ws.recv())["s"] == 3
            text = server.metrics_text()
    assert metric_value(text, "headway_execution_horizon_ticks_count", model="standin") == 3
    assert metric_value(text, "headway_execution_horizon_ticks_bucket", model="standin", le="2.0") == 0
    assert metric_value(text, "headway_execution_horizon_ticks_bucket", model="standin", le="3.0") == 3
