"""Executor hosts: the batched model call in the engine's thread or in a child process,
reached by the same typed messages, so the sessions cannot tell which."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from policies.standin import S, standin_actions
from server_harness import ServerThread, standin
from stream import registry
from stream.engine import Engine
from stream.hosts import ExecutorSpec, OpenSlot, ProcessHost, RemoteExecutorError, RunBatch, WorkItem
from stream.server import ServerConfig
from stream.wire import packb, unpackb


class CountingSlots:
    """A stepped model for the host tests: a counter per slot."""

    max_batch_size = 4
    slots = 2

    def __init__(self, fail_on: int | None = None):
        self.counters = [0, 0]
        self.fail_on = fail_on

    def open_slot(self, slot: int) -> None:
        self.counters[slot] = 0

    def close_slot(self, slot: int) -> None:
        pass

    def run(self, batch: RunBatch) -> list[int]:
        if self.fail_on is not None and any(item.inputs == self.fail_on for item in batch.items):
            raise ValueError("this input breaks the model")
        for slot, on in enumerate(batch.active):
            self.counters[slot] += on
        return [self.counters[item.slot] for item in batch.items]


@pytest.fixture
def process_host():
    host = ProcessHost(ExecutorSpec("test_executor_hosts:CountingSlots", {"fail_on": 13}))
    host.start()
    yield host
    host.stop()


def test_a_child_process_keeps_slot_state_across_typed_messages(process_host):
    assert process_host.pid != os.getpid() and process_host.max_batch_size == 4 and process_host.slots == 2
    process_host.call(OpenSlot(1))
    step = RunBatch(0, [WorkItem(None, slot=1)], active=[False, True])
    assert [process_host.call(step)[0] for _ in range(3)] == [1, 2, 3]


def test_an_error_in_the_child_comes_back_with_its_traceback_and_the_child_keeps_serving(process_host):
    process_host.call(OpenSlot(0))
    with pytest.raises(RemoteExecutorError, match="this input breaks the model"):
        process_host.call(RunBatch(0, [WorkItem(13, slot=0)], active=[True, False]))
    assert process_host.call(RunBatch(0, [WorkItem(1, slot=0)], active=[True, False])) == [1]


async def test_an_engine_steps_streams_in_a_child_process_as_it_does_in_its_thread():
    spec = ExecutorSpec("test_executor_hosts:CountingSlots", {})
    engine = Engine("child", ProcessHost(spec), max_batch_size=4, slots=2)
    engine.start()
    await engine.ready()
    a, b = engine.open_session(stepped=True), engine.open_session(stepped=True)
    outputs = await asyncio.gather(*[engine.submit(a, None, budget_s=10) for _ in range(3)],
                                   engine.submit(b, None, budget_s=10))
    assert [r.output for r in outputs] == [1, 2, 3, 1]
    await engine.stop()


def test_openpi_clients_get_their_chunks_from_a_model_in_a_child_process():
    with ServerThread([standin(0)], ServerConfig(executor_host="process")) as server:
        host = server.server.served["standin"].engine.host
        assert isinstance(host, ProcessHost) and host.pid != os.getpid()
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        for i in range(3):
            state = np.full(S, 0.1 * i, np.float32)
            np.testing.assert_allclose(policy.infer({"state": state})["actions"], standin_actions(state[None])[0],
                                       rtol=1e-6)


def test_a_robot_session_gets_real_time_chunks_from_a_trained_policy_in_a_child_process():
    model = registry.load("whack", registry.ModelOptions(max_batch_size=8))
    with ServerThread([model], ServerConfig(executor_host="process")) as server:
        with connect(f"ws://127.0.0.1:{server.port}/v1/policy") as ws:
            ws.send(packb({"type": "hello", "strategy": "rtc", "s": 4}))
            ready = unpackb(ws.recv())
            H, A, S_ = ready["model"]["horizon"], ready["model"]["action_dim"], ready["model"]["state_dim"]
            state = np.zeros(S_, np.float32)
            ws.send(packb({"type": "observation", "request_id": 0, "tick": 0, "state": state}))
            first = unpackb(ws.recv())
            ws.send(packb({"type": "observation", "request_id": 1, "tick": 4, "state": state,
                           "report": {"request_id": 0, "tick_sent": 0, "tick_arrived": 1}}))
            second = unpackb(ws.recv())
    assert first["type"] == second["type"] == "chunk"
    assert first["actions"].shape == second["actions"].shape == (H, A)
    assert second["start_tick"] == 4 and np.isfinite(second["actions"]).all()
