"""Bad inputs: each gets its documented error and close code (docs/protocol.md), and a
well-behaved session on the same server keeps getting correct, on-time replies throughout.

Every case runs against a fresh server (stand-in model, 5 ms per call) while a good client
streams observations at 50 Hz. "On time" is judged by the protocol -- no error replies,
and every reply's server-measured total within its budget -- not by asserting wall-clock
numbers in the test.
"""

from __future__ import annotations

import asyncio
import json
import socket

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream import wire
from policies.standin import standin_actions
from server_harness import ServerThread, metric_value, standin, state_for
from stream.server import ServerConfig

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUDGET_MS = 200.0
CONFIG = ServerConfig(token=TOKEN, capacity=3, max_size=2**20, send_timeout_s=0.5, close_timeout_s=0.5,
                      budget_s=BUDGET_MS / 1000, max_pending=4, socket_send_buffer=2**14)


class GoodClient:
    """Streams observations at 50 Hz and checks every reply."""

    def __init__(self, url: str):
        self.url = url
        self.replies = 0
        self.problems: list[str] = []
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.ws = await connect(self.url, compression=None, additional_headers=AUTH)
        await self.ws.recv()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            state = state_for(i % 7)
            await self.ws.send(wire.packb({"state": state}))
            frame = await self.ws.recv()
            if isinstance(frame, str):
                self.problems.append(frame)
            else:
                reply = wire.unpackb(frame)
                if not np.allclose(reply["actions"], standin_actions(state[None])[0]):
                    self.problems.append("wrong chunk")
                if reply["server_timing"]["total_ms"] > BUDGET_MS:
                    self.problems.append(f"late: {reply['server_timing']}")
                self.replies += 1
            i += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self.task, 5)
        await self.ws.close()


async def error_then_close(server: ServerThread, frame, code: str, close_code: int = 1008) -> None:
    """Send ``frame`` on a fresh session; expect error ``code`` as a text frame, then ``close_code``."""
    async with connect(server.url, compression=None, additional_headers=AUTH, max_size=None) as ws:
        await ws.recv()  # metadata
        await ws.send(frame)
        reply = await ws.recv()
        assert isinstance(reply, str), "errors are text frames on /"
        error = json.loads(reply)
        assert error["type"] == "error" and error["code"] == code, error
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == close_code


def observation(**fields) -> bytes:
    return wire.packb({"state": state_for(0), **fields})


async def not_msgpack(server):
    await error_then_close(server, b"\xc1\xc1\xc1 definitely not msgpack", "bad_frame")


async def unknown_type(server):
    await error_then_close(server, observation(type="teleport"), "unknown_type")


async def missing_field(server):
    await error_then_close(server, wire.packb({"prompt": "no state"}), "missing_field")


async def wrong_dtype(server):
    await error_then_close(server, observation(state=np.arange(14, dtype=np.int32)), "bad_dtype")


async def wrong_shape(server):
    await error_then_close(server, observation(state=np.zeros((2, 7), np.float32)), "bad_shape")


async def nan_value(server):
    state = state_for(0).copy()
    state[3] = np.nan
    await error_then_close(server, observation(state=state), "not_finite")


async def inf_value(server):
    state = state_for(0).copy()
    state[0] = np.inf
    await error_then_close(server, observation(state=state), "not_finite")


async def complex_dtype(server):
    crafted = {b"__ndarray__": True, b"data": b"\0" * 112, b"dtype": "<c8", b"shape": [14]}
    await error_then_close(server, msgpack.packb({"state": crafted}), "bad_frame")


async def oversized_image(server):
    await error_then_close(server, observation(images={"cam": np.zeros((700, 10, 3), np.uint8)}), "bad_shape")


async def unknown_field(server):
    await error_then_close(server, observation(actions=np.zeros(3, np.float32)), "unknown_field")


async def text_frame(server):
    await error_then_close(server, json.dumps({"state": [0.0] * 14}), "text_not_accepted")


async def frame_over_max_size(server):
    async with connect(server.url, compression=None, additional_headers=AUTH, max_size=None) as ws:
        await ws.recv()
        await ws.send(b"\0" * (2**20 + 1))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1009


async def wrong_token(server):
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert info.value.response.status_code == 401


async def client_that_never_reads(server):
    # A tiny kernel receive buffer, so that replies back up into the server within a few
    # dozen (a default buffer would absorb megabytes first -- the same outcome, later).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = await connect(server.url, sock=sock, compression=None, additional_headers=AUTH, max_queue=1)
    frame = observation()
    try:
        for _ in range(20000):  # until TCP pushes back: the server stopped reading us
            await asyncio.wait_for(ws.send(frame), 0.5)
    except (asyncio.TimeoutError, ConnectionClosed):
        pass
    for _ in range(100):
        if metric_value(server.metrics_text(), "headway_shed_total", reason="slow_consumer") >= 1:
            break
        await asyncio.sleep(0.05)
    assert metric_value(server.metrics_text(), "headway_shed_total", reason="slow_consumer") == 1
    for _ in range(100):  # closed 1008; the close frame cannot reach a client that never reads,
        if server.call(lambda: len(server.server.sessions)) == 1:  # so the server drops the TCP link
            break
        await asyncio.sleep(0.05)
    assert server.call(lambda: len(server.server.sessions)) == 1
    ws.transport.abort()


async def disconnect_mid_inference(server):
    for _ in range(5):
        ws = await connect(server.url, compression=None, additional_headers=AUTH)
        await ws.recv()
        await ws.send(observation())
        ws.transport.abort()  # gone before the reply
    for _ in range(100):
        if server.call(lambda: len(server.server.sessions)) == 1:
            break
        await asyncio.sleep(0.02)
    assert server.call(lambda: (len(server.server.sessions), server.server.served["standin"].engine.open_sessions)) \
        == (1, 1)
    assert metric_value(server.metrics_text(), "headway_replies_total", code="internal") == 0


async def more_sessions_than_capacity(server):
    extra = [await connect(server.url, additional_headers=AUTH) for _ in range(2)]  # good client + 2 = 3
    for ws in extra:
        await ws.recv()
    async with connect(server.url, additional_headers=AUTH) as ws:
        error = json.loads(await ws.recv())
        assert error["code"] == "at_capacity" and "capacity of 3" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1013
    for ws in extra:
        await ws.close()


async def bad_request_id(server):
    await error_then_close(server, observation(id=[1, 2]), "bad_type")


CASES = [not_msgpack, unknown_type, missing_field, wrong_dtype, wrong_shape, nan_value, inf_value, complex_dtype,
         oversized_image, unknown_field, text_frame, frame_over_max_size, wrong_token, client_that_never_reads,
         disconnect_mid_inference, more_sessions_than_capacity, bad_request_id]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_bad_input_gets_its_documented_answer_while_a_good_session_keeps_going(case):
    with ServerThread([standin(5)], CONFIG) as server:
        good = GoodClient(server.url)
        await good.start()
        await asyncio.sleep(0.1)
        before = good.replies
        await case(server)
        await asyncio.sleep(0.1)
        await good.stop()
    assert good.problems == []
    assert good.replies > before  # it kept being served while the bad client misbehaved


def test_the_table_covers_at_least_twelve_bad_inputs():
    assert len(CASES) >= 12
