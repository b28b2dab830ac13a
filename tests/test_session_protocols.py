"""The session protocols of ``/`` and ``/v1/policy``, without a socket, an engine or a clock:
frames and engine outcomes in, ``Send``/``Submit``/``Close`` actions out."""

from __future__ import annotations

import json

import numpy as np

from stream import protocol, registry
from stream.engine import Result
from stream.errors import ProtocolError
from stream.session_protocols import Close, OpenpiProtocol, RealtimePolicyProtocol, Send, Submit
from stream.wire import packb, unpackb

MS = 1_000_000


def standin() -> registry.LoadedModel:
    return registry.load("standin", registry.ModelOptions(standin_ms=0.0))


def state(model) -> np.ndarray:
    return np.zeros(model.metadata["state_dim"], np.float32)


def result(output, batch_size: int = 1) -> Result:
    return Result(output, queue_ns=1 * MS, compute_ns=2 * MS, batch_size=batch_size, degraded=False)


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_openpi_protocol_sends_the_metadata_first():
    model = standin()
    [send] = OpenpiProtocol(model, budget_s=0.1).opened()
    metadata = unpackb(send.frame)
    assert metadata["action_horizon"] == model.metadata["action_horizon"] and metadata["budget_ms"] == 100.0


def test_an_observation_becomes_one_submit_with_the_validated_state_and_budget():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    [submit] = session.received(packb({"state": state(model)}), now_ns=5 * MS)
    assert isinstance(submit, Submit) and submit.budget_s == 0.1 and submit.arrival_ns == 5 * MS
    assert submit.inputs["state"].dtype == np.float32


def test_replies_go_out_in_request_order_whatever_order_results_arrive_in():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    keys = [session.received(packb({"state": state(model), "id": i}), now_ns=0)[0].key for i in range(3)]
    assert session.answered(keys[2], result(np.full((2, 2), 2.0)), 10 * MS) == []
    assert session.answered(keys[1], result(np.full((2, 2), 1.0)), 10 * MS) == []
    sends = session.answered(keys[0], result(np.full((2, 2), 0.0)), 10 * MS)
    assert [unpackb(s.frame)["id"] for s in sends] == [0, 1, 2]
    assert [float(unpackb(s.frame)["actions"][0, 0]) for s in sends] == [0.0, 1.0, 2.0]


def test_a_reply_carries_server_timing_from_arrival_to_the_answer():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    [submit] = session.received(packb({"state": state(model)}), now_ns=10 * MS)
    [send] = session.answered(submit.key, result(np.zeros((2, 2)), batch_size=3), now_ns=17 * MS)
    timing = unpackb(send.frame)["server_timing"]
    assert timing == {"infer_ms": 2.0, "queue_ms": 1.0, "total_ms": 7.0, "batch_size": 3, "degraded": False}
    assert send.code == "ok" and send.arrival_ns == 10 * MS and send.deadline_ns == 110 * MS


def test_a_non_fatal_engine_error_is_answered_in_place_and_the_session_stays_open():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    [submit] = session.received(packb({"state": state(model), "id": 7}), now_ns=0)
    [send] = session.answered(submit.key, ProtocolError("deadline_exceeded", "late"), 0)
    assert json.loads(send.frame) == {"type": "error", "code": "deadline_exceeded", "message": "late", "id": 7}
    assert not session.closing


def test_bad_input_is_reported_after_the_replies_in_flight_then_closes_with_1008():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    [submit] = session.received(packb({"state": state(model)}), now_ns=0)
    assert session.received(packb({"state": "nope"}), now_ns=0) == []  # waits behind the reply owed
    assert session.received(packb({"state": state(model)}), now_ns=0) == []  # nothing more is taken
    actions = session.answered(submit.key, result(np.zeros((2, 2))), 0)
    assert kinds(actions) == ["Send", "Send", "Close"]
    assert json.loads(actions[1].frame)["code"] == "bad_type" and actions[2].code == 1008


def test_a_text_frame_on_the_openpi_endpoint_is_refused_with_1008():
    session = OpenpiProtocol(standin(), budget_s=0.1)
    send, close = session.received('{"state": [0]}', now_ns=0)
    assert json.loads(send.frame)["code"] == "text_not_accepted" and close == Close(1008, close.reason)


def test_the_protocol_pauses_reading_while_max_pending_replies_are_owed():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1, max_pending=2)
    first = session.received(packb({"state": state(model)}), 0)[0]
    session.received(packb({"state": state(model)}), 0)
    assert session.paused
    session.answered(first.key, result(np.zeros((2, 2))), 0)
    assert not session.paused


def test_drain_closes_with_1001_once_the_replies_owed_are_sent():
    model = standin()
    session = OpenpiProtocol(model, budget_s=0.1)
    [submit] = session.received(packb({"state": state(model)}), 0)
    assert session.drain() == []
    assert session.received(packb({"state": state(model)}), 0) == []  # no new work while draining
    actions = session.answered(submit.key, result(np.zeros((2, 2))), 0)
    assert kinds(actions) == ["Send", "Close"] and actions[1].code == 1001


def test_refused_admission_says_at_capacity_and_closes_with_1013():
    send, close = OpenpiProtocol(standin(), budget_s=0.1).refused(ProtocolError("at_capacity", "full"))
    assert json.loads(send.frame)["code"] == "at_capacity" and close.code == 1013


def hello(session: RealtimePolicyProtocol, **fields) -> list:
    return session.received(protocol.encode_text({"type": "hello", **fields}), now_ns=0)


def test_policy_protocol_answers_hello_with_ready_in_the_frame_kind_it_came_in():
    session = RealtimePolicyProtocol(standin(), budget_s=0.1)
    assert session.opened() == []  # the client speaks first
    [send] = hello(session, strategy="naive")
    ready = json.loads(send.frame)
    assert ready["type"] == "ready" and ready["strategy"]["strategy"] == "naive"


def test_policy_protocol_closes_with_1008_when_no_hello_comes_in_time():
    session = RealtimePolicyProtocol(standin(), budget_s=0.1)
    send, close = session.hello_timed_out()
    assert json.loads(send.frame)["code"] == "missing_field" and close.code == 1008


def test_policy_protocol_refuses_an_observation_before_hello():
    model = standin()
    session = RealtimePolicyProtocol(model, budget_s=0.1)
    send, close = session.received(packb({"type": "observation", "request_id": 0, "tick": 0,
                                          "state": state(model)}), now_ns=0)
    assert json.loads(send.frame)["code"] == "unknown_type" and close.code == 1008


def test_an_rtc_observation_after_a_chunk_submits_the_previous_chunk_shifted_to_its_tick():
    model = standin()
    H, A = model.metadata["action_horizon"], model.metadata["action_dim"]
    session = RealtimePolicyProtocol(model, budget_s=0.1)
    hello(session, strategy="rtc", s=4)
    observation = {"type": "observation", "request_id": 0, "tick": 0, "state": state(model).tolist()}
    [first] = session.received(protocol.encode_text(observation), now_ns=0)
    assert "prev_chunk" not in first.inputs  # nothing to inpaint yet
    chunk = np.arange(H * A, dtype=np.float32).reshape(H, A)
    [send] = session.answered(first.key, result(chunk), now_ns=5 * MS)
    reply = json.loads(send.frame)
    assert reply["type"] == "chunk" and reply["start_tick"] == 0 and reply["request_id"] == 0
    observation.update(request_id=1, tick=3, report={"request_id": 0, "tick_sent": 0, "tick_arrived": 1})
    [second] = session.received(protocol.encode_text(observation), now_ns=60 * MS)
    np.testing.assert_array_equal(second.inputs["prev_chunk"][: H - 3], chunk[3:])
    assert second.allow_degrade  # the hello did not turn degrading off
