"""Bad inputs: each gets its documented error and close code (docs/protocol.md), and a
well-behaved session on the same server keeps its rate throughout.

Every case runs against a fresh server (stand-in model, 5 ms per call) while a good client
streams observations at 50 Hz from its own thread, open loop: each request has a scheduled
send time, and a reply's lateness counts from that time on the client's clock, so a server
that stalls is charged for every request it delayed, including those the client could only
send late. The bound is generous (a few hundred milliseconds, against replies that take a
few): a loaded machine stays far inside it, an event loop that blocks for half a second on a
bad frame leaves a dozen replies or more outside it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as connect_sync

from stream import registry, wire
from policies.standin import standin_actions
from server_harness import ServerThread, metric_value, standin, state_for
from stream.protocol import ERROR_CLOSE_CODES
from stream.server import ServerConfig
from tiny_llms import tiny_llm

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = ServerConfig(token=TOKEN, capacity=3, max_size=2**20, send_timeout_s=0.5, close_timeout_s=0.5,
                      budget_s=0.2, max_pending=4, socket_send_buffer=2**14)

# A reply later than LATE_S after its scheduled send is late; a good session may see at most
# MAX_LATE of them per case. One 0.5 s stall of the server's loop makes every request
# scheduled in the stall, and the backlog after it, late: well over MAX_LATE.
LATE_S = 0.25
MAX_LATE = 3


class GoodClient:
    """``with GoodClient(url) as good:`` streams observations on a fixed 50 Hz schedule from
    its own thread (so nothing the test does on its event loop delays it) and checks every
    reply: the correct chunk, and its lateness from the scheduled send time.

    One request is in flight at a time (openpi's protocol): when a reply comes after the
    next send time, the next request goes out at once and its lateness still counts from
    its scheduled time.
    """

    PERIOD_S = 0.02

    def __init__(self, url: str):
        self.url = url
        self.lateness_s: list[float] = []  # per reply, in request order
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="good-client")

    @property
    def replies(self) -> int:
        return len(self.lateness_s)

    def late(self, bound_s: float) -> list[float]:
        """Lateness of the replies that came more than ``bound_s`` after their scheduled send."""
        return [late for late in self.lateness_s if late > bound_s]

    def __enter__(self) -> "GoodClient":
        self._thread.start()
        if not self._connected.wait(10):
            self.problems.append("no metadata within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        n = 0
        try:
            with connect_sync(self.url, compression=None, additional_headers=AUTH, open_timeout=10) as ws:
                ws.recv(timeout=10)  # metadata
                self._connected.set()
                start = time.monotonic()
                while True:
                    scheduled = start + n * self.PERIOD_S
                    if self._stop.wait(max(0.0, scheduled - time.monotonic())):
                        return
                    state = state_for(n % 7)
                    ws.send(wire.packb({"state": state}))
                    frame = ws.recv(timeout=10)
                    self.lateness_s.append(time.monotonic() - scheduled)
                    if isinstance(frame, str):
                        self.problems.append(frame)
                    elif not np.allclose(wire.unpackb(frame)["actions"], standin_actions(state[None])[0]):
                        self.problems.append(f"wrong chunk for request {n}")
                    n += 1
        except Exception as exc:  # recorded, so that the test fails instead of the thread dying quietly
            self.problems.append(f"request {n}: {exc!r}")
        finally:
            self._connected.set()


Misbehave = Callable[[ServerThread, "BadInput"], Awaitable[None]]


@dataclass(frozen=True)
class BadInput:
    """One row of the table: what a misbehaving client does, and the documented answer it must
    get, which ``misbehave`` asserts. ``code`` is the error code (or the close reason) of
    ``stream.protocol.ERROR_CLOSE_CODES``; None where the answer is not a protocol error
    (an HTTP refusal, a clean-up)."""

    name: str
    misbehave: Misbehave
    code: str | None
    close_code: int | None
    chat: bool = False  # the server also serves a chat model (a tiny LM at /v1/chat)
    asr: bool = False  # the server also serves a speech recogniser (a tiny one at /v1/asr, a 1 s buffer)


async def error_then_close(server: ServerThread, frame: bytes | str, case: BadInput) -> None:
    """Send ``frame`` on a fresh session; expect ``case.code`` as a text frame, then ``case.close_code``."""
    async with connect(server.url, compression=None, additional_headers=AUTH, max_size=None) as ws:
        await ws.recv()  # metadata
        await ws.send(frame)
        reply = await ws.recv()
        assert isinstance(reply, str), "errors are text frames on /"
        error = json.loads(reply)
        assert error["type"] == "error" and error["code"] == case.code, error
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code


def sends(make_frame: Callable[[], bytes | str]) -> Misbehave:
    """A case that sends one bad frame and expects its error, then its close."""
    async def misbehave(server: ServerThread, case: BadInput) -> None:
        await error_then_close(server, make_frame(), case)
    return misbehave


def observation(**fields) -> bytes:
    return wire.packb({"state": state_for(0), **fields})


def with_value(index: int, value: float) -> bytes:
    state = state_for(0).copy()
    state[index] = value
    return observation(state=state)


def complex_array() -> bytes:
    crafted = {b"__ndarray__": True, b"data": b"\0" * 112, b"dtype": "<c8", b"shape": [14]}
    return msgpack.packb({"state": crafted})


def open_sessions(server: ServerThread) -> float:
    return metric_value(server.metrics_text(), "headway_open_sessions", model="standin", route="/")


async def eventually(predicate: Callable[[], bool], attempts: int = 100, pause_s: float = 0.05) -> bool:
    for _ in range(attempts):
        if predicate():
            return True
        await asyncio.sleep(pause_s)
    return predicate()


async def frame_over_max_size(server: ServerThread, case: BadInput) -> None:
    async with connect(server.url, compression=None, additional_headers=AUTH, max_size=None) as ws:
        await ws.recv()
        await ws.send(b"\0" * (2**20 + 1))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code


async def wrong_token(server: ServerThread, case: BadInput) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert info.value.response.status_code == 401


async def client_that_never_reads(server: ServerThread, case: BadInput) -> None:
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

    def shed() -> float:
        return metric_value(server.metrics_text(), "headway_shed_total", reason=case.code)

    await eventually(lambda: shed() >= 1)
    assert shed() == 1
    # Closed 1008; the close frame cannot reach a client that never reads, so the server
    # drops the TCP link: only the good session is left.
    assert await eventually(lambda: open_sessions(server) == 1)
    ws.transport.abort()


async def disconnect_mid_inference(server: ServerThread, case: BadInput) -> None:
    for _ in range(5):
        ws = await connect(server.url, compression=None, additional_headers=AUTH)
        await ws.recv()
        await ws.send(observation())
        ws.transport.abort()  # gone before the reply
    assert await eventually(lambda: open_sessions(server) == 1, pause_s=0.02)
    assert metric_value(server.metrics_text(), "headway_replies_total", code="internal") == 0


async def chat_past_the_context(server: ServerThread, case: BadInput) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/v1/chat", compression=None, additional_headers=AUTH) as ws:
        await ws.send(wire.packb({"type": "hello"}))
        assert wire.unpackb(await ws.recv())["type"] == "ready"
        await ws.send(wire.packb({"type": "prompt_delta", "text": "go left and right " * 220}))  # > 1024 tokens
        error = json.loads(await ws.recv())
        assert error["code"] == case.code and "context of 1024 tokens" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code


async def speech_past_its_buffer(server: ServerThread, case: BadInput) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/v1/asr", compression=None, additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "hello", "sample_rate": 16000, "format": "f32le"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(np.zeros(32000, "<f4").tobytes())  # 2 s in one frame, into a 1 s buffer
        error = json.loads(await ws.recv())
        assert error["code"] == case.code and "more than 1 s of audio" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code


async def more_sessions_than_capacity(server: ServerThread, case: BadInput) -> None:
    extra = [await connect(server.url, additional_headers=AUTH) for _ in range(2)]  # good client + 2 = 3
    for ws in extra:
        await ws.recv()
    async with connect(server.url, additional_headers=AUTH) as ws:
        error = json.loads(await ws.recv())
        assert error["code"] == case.code and "capacity of 3" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code
    for ws in extra:
        await ws.close()


async def future_state_from_a_model_without_a_rollout(server: ServerThread, case: BadInput) -> None:
    # The stand-in has no model of the robot's dynamics to roll its state forward with.
    async with connect(server.url + "v1/policy", compression=None, additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "hello", "strategy": "rtc", "future_state": True}))
        error = json.loads(await ws.recv())
        assert error["code"] == case.code and "future_state" in error["message"], error
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == case.close_code


CASES = [
    BadInput("not_msgpack", sends(lambda: b"\xc1\xc1\xc1 definitely not msgpack"), "bad_frame", 1008),
    BadInput("unknown_type", sends(lambda: observation(type="teleport")), "unknown_type", 1008),
    BadInput("missing_field", sends(lambda: wire.packb({"prompt": "no state"})), "missing_field", 1008),
    BadInput("wrong_dtype", sends(lambda: observation(state=np.arange(14, dtype=np.int32))), "bad_dtype", 1008),
    BadInput("wrong_shape", sends(lambda: observation(state=np.zeros((2, 7), np.float32))), "bad_shape", 1008),
    BadInput("nan_value", sends(lambda: with_value(3, np.nan)), "not_finite", 1008),
    BadInput("inf_value", sends(lambda: with_value(0, np.inf)), "not_finite", 1008),
    BadInput("complex_dtype", sends(complex_array), "bad_frame", 1008),
    BadInput("oversized_image", sends(lambda: observation(images={"cam": np.zeros((700, 10, 3), np.uint8)})),
             "bad_shape", 1008),
    BadInput("unknown_field", sends(lambda: observation(actions=np.zeros(3, np.float32))), "unknown_field", 1008),
    BadInput("text_frame", sends(lambda: json.dumps({"state": [0.0] * 14})), "text_not_accepted", 1008),
    BadInput("bad_request_id", sends(lambda: observation(id=[1, 2])), "bad_type", 1008),
    BadInput("future_state_without_rollout", future_state_from_a_model_without_a_rollout, "unsupported", 1008),
    BadInput("frame_over_max_size", frame_over_max_size, "too_large", 1009),
    BadInput("client_that_never_reads", client_that_never_reads, "slow_consumer", 1008),
    BadInput("more_sessions_than_capacity", more_sessions_than_capacity, "at_capacity", 1013),
    BadInput("chat_past_the_context", chat_past_the_context, "context_full", 1009, chat=True),
    BadInput("speech_past_its_buffer", speech_past_its_buffer, "buffer_full", 1009, asr=True),
    BadInput("wrong_token", wrong_token, None, None),
    BadInput("disconnect_mid_inference", disconnect_mid_inference, None, None),
]


@pytest.fixture(scope="module")
def tiny_asr_dir(tmp_path_factory):
    from tiny_asr import save_tiny_asr

    directory = tmp_path_factory.mktemp("asr")
    save_tiny_asr(directory)
    return directory


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_gets_its_documented_answer_while_a_good_session_keeps_its_rate(case, tiny_asr_dir):
    models = [standin(5)]
    if case.chat:
        models.append(registry.load(f"llm:{tiny_llm(max_context=1024)}"))
    if case.asr:
        from tiny_asr import asr_model

        models.append(asr_model(tiny_asr_dir, slots=2, buffer_s=1.0))
    with ServerThread(models, CONFIG) as server:
        with GoodClient(server.url) as good:
            assert await eventually(lambda: good.replies >= 5)
            before = good.replies
            await case.misbehave(server, case)
            await asyncio.sleep(0.2)  # replies the misbehaviour delayed come in
            during = good.replies - before
    assert good.problems == []
    assert during >= 5  # served through the case and the 0.2 s after it, at 50 Hz
    assert len(good.late(LATE_S)) <= MAX_LATE, f"late replies (s): {good.late(LATE_S)}"


def test_every_error_that_answers_bad_input_with_a_close_has_a_case():
    bad_input_closes = {1008, 1009, 1013}
    documented = {code for code, close in ERROR_CLOSE_CODES.items() if close in bad_input_closes}
    assert documented <= {case.code for case in CASES}
    for case in CASES:
        if case.code is not None:
            assert case.close_code == ERROR_CLOSE_CODES[case.code], case.name
