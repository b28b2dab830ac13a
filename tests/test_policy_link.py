"""``WebsocketPolicyLink`` on its own: abandon drops the connection the request went out on, and
a reply that comes on an abandoned connection is never delivered.

The peer is a scripted ``/v1/policy`` server on loopback that answers each observation with a
chunk tagged by its request id, and holds the reply to a request until the test releases it;
it records which connection each hello and observation came on. The link runs on a hub of
its own, which the test may hold (``hub.call`` a function that waits), so a reply can be
made to arrive after ``abandon`` was asked and before the link acted on anything else.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from clients.policy_link import LinkHub, WebsocketPolicyLink
from clients.robot_loop import ChunkReply
from stream.wire import packb, unpackb

H, A = 4, 2
OBSERVATION = {"state": np.zeros(3, np.float32)}


class ScriptedPolicyServer:
    """``with ScriptedPolicyServer() as peer:`` a ``/v1/policy`` peer at ``peer.url``.

    ``hold(request_id)`` makes it wait before answering that request until ``release``;
    ``answered`` is set once the held reply went out. ``hellos`` and ``observations`` list
    the connection number (1, 2, ...) each message came on.
    """

    def __init__(self) -> None:
        self.hellos: list[int] = []
        self.observations: list[tuple[int, int]] = []  # (connection, request id)
        self.closed: list[int] = []  # connections that ended
        self._held: dict[int, threading.Event] = {}
        self.received = threading.Event()  # a held request arrived
        self.answered = threading.Event()  # a held request's reply was sent
        self._lock = threading.Lock()
        self._connections = 0

    def hold(self, request_id: int) -> threading.Event:
        release = self._held[request_id] = threading.Event()
        return release

    def __enter__(self) -> "ScriptedPolicyServer":
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/v1/policy"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for release in self._held.values():
            release.set()
        self._server.shutdown()
        self._thread.join(5)

    def _handle(self, ws) -> None:
        with self._lock:
            self._connections += 1
            connection = self._connections
        try:
            assert unpackb(ws.recv())["type"] == "hello"
            self.hellos.append(connection)
            ws.send(packb({"type": "ready", "model": {"horizon": H, "action_dim": A}, "strategy": {}}))
            for frame in ws:
                message = unpackb(frame)
                request_id = int(message["request_id"])
                self.observations.append((connection, request_id))
                release = self._held.get(request_id)
                if release is not None:
                    self.received.set()
                    release.wait(10)
                actions = np.full((H, A), request_id, np.float32)
                ws.send(packb({"type": "chunk", "request_id": request_id, "actions": actions,
                               "start_tick": int(message["tick"]), "d": 0, "s": 2}))
                if release is not None:
                    self.answered.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.append(connection)


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def replies_until(link: WebsocketPolicyLink, request_id: int, timeout_s: float = 10.0) -> list:
    """Everything the link delivered, polled until the reply to ``request_id`` is among it."""
    replies: list = []
    wait_for(lambda: replies.extend(link.poll()) or any(r.request_id == request_id for r in replies), timeout_s)
    return replies


@pytest.fixture
def hub():
    hub = LinkHub()
    yield hub
    hub.loop.call_soon_threadsafe(hub.loop.stop)
    hub.thread.join(5)


@pytest.fixture
def peer():
    with ScriptedPolicyServer() as server:
        yield server


@pytest.fixture
def link(peer, hub):
    link = WebsocketPolicyLink(peer.url, {"strategy": "rtc"}, hub=hub, backoff_s=(0.01, 0.05))
    link.wait_ready(10)
    yield link
    link.close()


def test_a_reply_is_delivered_once_with_its_request_id_and_chunk(link, peer):
    link.request(1, 0, OBSERVATION, None)
    replies = replies_until(link, 1)
    assert [r.request_id for r in replies] == [1]
    assert isinstance(replies[0], ChunkReply) and np.array_equal(replies[0].actions, np.full((H, A), 1.0))
    assert link.poll() == []


def test_abandon_drops_the_connection_the_request_went_out_on_and_says_hello_again(link, peer):
    release_reply = peer.hold(3)
    link.request(3, 0, OBSERVATION, None)
    assert peer.received.wait(10)
    link.abandon(3)  # while its reply is outstanding
    assert wait_for(lambda: peer.hellos == [1, 2] and link.connects == 2)
    release_reply.set()
    assert wait_for(lambda: 1 in peer.closed)  # the server saw the old connection end
    link.request(4, 8, OBSERVATION, None)  # the next request goes out on the new connection
    assert [r.request_id for r in replies_until(link, 4)] == [4]
    assert peer.observations == [(1, 3), (2, 4)]


def test_a_reply_that_arrives_after_abandon_is_never_delivered(link, peer, hub):
    release_reply = peer.hold(5)
    link.request(5, 0, OBSERVATION, None)
    assert peer.received.wait(10)
    hub_held, release_hub = threading.Event(), threading.Event()
    hub.call(lambda: (hub_held.set(), release_hub.wait(10)))
    assert hub_held.wait(10)
    release_reply.set()  # the reply reaches the link's socket while its loop is held ...
    assert peer.answered.wait(10)
    time.sleep(0.05)
    link.abandon(5)  # ... and abandon is next in the link's queue, ahead of reading it
    release_hub.set()
    assert wait_for(lambda: link.connects == 2)  # the old connection is over
    link.request(6, 8, OBSERVATION, None)
    assert [r.request_id for r in replies_until(link, 6)] == [6]  # never 5


def test_abandoning_a_request_that_never_went_out_keeps_the_connection(link, peer):
    link.request(1, 0, OBSERVATION, None)
    assert [r.request_id for r in replies_until(link, 1)] == [1]
    link.abandon(7)  # not the last request sent on this connection: its reply cannot come here
    link.request(2, 4, OBSERVATION, None)  # handled after the abandon, on the same connection
    assert [r.request_id for r in replies_until(link, 2)] == [2]
    assert peer.hellos == [1] and link.connects == 1
