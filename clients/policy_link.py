"""``WebsocketPolicyLink``: a ``RobotLoop``'s connection to a Headway server's ``/v1/policy``.

The robot loop must never wait on the network, so every link's socket lives on one shared
background event loop (``LinkHub``); ``request``/``poll``/``abandon`` only hand work to it
and read what it left. The link reconnects with exponential backoff whenever the
connection drops (server restart, a replica gone, ``abandon``), and says ``hello`` again on
every new connection. Replies are tagged with the connection they came on: one from a
connection the loop abandoned or the server ended is discarded, never executed. A request
that the server's end of a connection took with it (sent and unanswered, or handed over
while disconnected) is answered ``RequestFailed(code="connection_lost")`` as soon as the next
connection is ready, so the loop asks again at once instead of waiting out its timeout.

A refusal that retrying cannot mend ends the link, and ``wait_ready`` raises it at once:
:class:`clients.sdk.HandshakeRefused` (an HTTP answer to the handshake other than 502-504:
wrong path, token, model) or :class:`PolicyServerError` (the server refused the hello).

The messages are those of ``docs/protocol.md`` (section ``/v1/policy``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from clients.robot_loop import ChunkReply, RequestFailed, request_realtime_priority
from clients.sdk import RETRYABLE_STATUS, HandshakeRefused
from stream.wire import packb, unpackb


class LinkHub:
    """One background thread running the event loop that all links' sockets share."""

    _shared: "LinkHub | None" = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="policy-link-hub")
        self.thread.start()

    @classmethod
    def shared(cls) -> "LinkHub":
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def set_priority(self, priority: int) -> None:
        """Real-time scheduling for the hub's thread too (``request_realtime_priority``): a
        robot loop at real-time priority that needs the interpreter lock must not wait for a
        hub thread that the OS preempted while holding it."""
        self.call(request_realtime_priority, priority)

    def call(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro) -> "asyncio.Future":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


class PolicyServerError(RuntimeError):
    """The server refused the session (bad hello, unknown model, auth); retrying will not help."""


class WebsocketPolicyLink:
    """See the module docstring. ``hello`` is sent as given (``type`` added).

    ``wait_ready(timeout)`` blocks until the first ``ready`` and returns the model metadata,
    or raises the refusal that ended the link (see the module docstring), or ``TimeoutError``
    naming the last failed attempt. Counters: ``connects``, ``errors`` (error messages
    received), ``replies_dropped`` (replies from a connection no longer current: never
    delivered), ``last_error``.
    """

    def __init__(
        self,
        url: str,
        hello: dict[str, Any] | None = None,
        token: str | None = None,
        hub: LinkHub | None = None,
        backoff_s: tuple[float, float] = (0.05, 1.0),
        inject_latency_ms: float = 0.0,
    ) -> None:
        self.url = url
        self.hello = {"type": "hello", **(hello or {})}
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self.hub = hub or LinkHub.shared()
        self.backoff_s = backoff_s
        self.inject_s = inject_latency_ms / 1e3
        self.metadata: dict[str, Any] | None = None
        self.connects = 0
        self.errors = 0
        self.replies_dropped = 0  # replies that came on a connection abandoned or ended: never delivered
        self.last_error: dict[str, Any] | None = None
        self._replies: deque[ChunkReply | RequestFailed] = deque()
        self._ready = threading.Event()
        self._ws = None
        self._epoch = 0
        self._last_sent: tuple[int, int] | None = None  # (request id, epoch) of the last request sent
        self._last_answered: int | None = None  # request id of the last reply received
        self._lost: int | None = None  # a request the connection's end took with it, failed on reconnect
        self._closed = False
        self._fatal: BaseException | None = None
        self._last_failure: str | None = None  # why the last connection attempt failed
        self._task = self.hub.run(self._run())

    # -- called from the robot loop's thread: never blocks ---------------------------------

    def request(self, request_id: int, tick: int, observation: dict[str, np.ndarray], report: dict[str, int] | None) -> None:
        message = {"type": "observation", "request_id": request_id, "tick": tick, **observation}
        if report is not None:
            message["report"] = report
        self.hub.call(self._send_soon, request_id, packb(message))

    def poll(self) -> list[ChunkReply | RequestFailed]:
        replies = []
        while self._replies:
            replies.append(self._replies.popleft())
        return replies

    def abandon(self, request_id: int) -> None:
        self.hub.call(self._abandon, request_id)

    # -- blocking helpers for set-up and tear-down -----------------------------------------

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        if not self._ready.wait(timeout):
            failure = f"; last attempt: {self._last_failure}" if self._last_failure else ""
            raise TimeoutError(f"no ready from {self.url} within {timeout} s{failure}")
        if self._fatal is not None:
            raise self._fatal
        assert self.metadata is not None
        return self.metadata

    def close(self) -> None:
        self._closed = True
        self.hub.call(self._drop_connection)
        try:
            self._task.result(timeout=5)
        except Exception:
            pass

    # -- on the hub's loop -------------------------------------------------------------------

    def _send_soon(self, request_id: int, frame: bytes) -> None:
        ws = self._ws
        if ws is None:  # not connected: failed once we are back, so the loop asks again
            self._lost = request_id
            return
        self._last_sent = (request_id, self._epoch)
        if self.inject_s:
            self.hub.loop.call_later(self.inject_s / 2, self._send_now, ws, frame)
        else:
            self._send_now(ws, frame)

    def _send_now(self, ws, frame: bytes) -> None:
        async def send():
            try:
                await ws.send(frame)
            except ConnectionClosed:
                pass

        self.hub.loop.create_task(send())

    def _abandon(self, request_id: int) -> None:
        # Only the connection the request went out on can still answer it; a request that
        # never went out (we were disconnected) leaves a fresh connection alone.
        if self._last_sent == (request_id, self._epoch):
            self._drop_connection()

    def _drop_connection(self) -> None:
        self._epoch += 1
        ws, self._ws = self._ws, None
        if ws is not None:
            self.hub.loop.create_task(ws.close())

    def _deliver(self, epoch: int, reply: ChunkReply | RequestFailed) -> None:
        if epoch == self._epoch:
            self._replies.append(reply)
        else:
            self.replies_dropped += 1

    async def _run(self) -> None:
        delay = self.backoff_s[0]
        while not self._closed:
            try:
                async with connect(self.url, additional_headers=self.headers, compression=None,
                                   max_size=16 * 2**20, open_timeout=5) as ws:
                    await ws.send(packb(self.hello))
                    ready = unpackb(await ws.recv())
                    if ready.get("type") != "ready":
                        raise PolicyServerError(f"server refused hello: {ready}")
                    self.metadata = ready
                    self._ws = ws
                    epoch = self._epoch
                    self.connects += 1
                    self._last_failure = None
                    self._ready.set()
                    delay = self.backoff_s[0]
                    if self._lost is not None:
                        self._deliver(epoch, RequestFailed(self._lost, "connection_lost"))
                        self._lost = None
                    async for frame in ws:  # errors come as JSON text frames, chunks as binary
                        self._on_message(epoch, unpackb(frame) if isinstance(frame, bytes) else json.loads(frame))
                        if self._ws is not ws:
                            break
            except InvalidStatus as exc:
                if exc.response.status_code not in RETRYABLE_STATUS:
                    self._fatal = HandshakeRefused(self.url, exc.response)
                    self._ready.set()
                    return
                self._last_failure = str(HandshakeRefused(self.url, exc.response))
            except PolicyServerError as exc:
                self._fatal = exc
                self._ready.set()
                return
            except (OSError, ConnectionClosed, InvalidHandshake, asyncio.TimeoutError, ValueError) as exc:
                self._last_failure = f"{type(exc).__name__}: {exc}"
            finally:
                if self._ws is not None:  # the server's end (``_drop_connection`` clears _ws itself)
                    sent = self._last_sent
                    if sent is not None and sent[1] == self._epoch and sent[0] != self._last_answered:
                        self._lost = sent[0]
                    self._epoch += 1  # nothing more from that connection is delivered
                self._ws = None
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(self.backoff_s[1], delay * 2)

    def _on_message(self, epoch: int, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if isinstance(message.get("request_id"), int):
            self._last_answered = message["request_id"]
        if message.get("type") == "chunk":
            reply = ChunkReply(
                request_id=int(message["request_id"]),
                actions=np.asarray(message["actions"], dtype=np.float32),
                start_tick=int(message["start_tick"]),
                d=int(message["d"]),
                s=int(message["s"]),
                timing=dict(message.get("timing") or {}),
                received_at=time.monotonic() + self.inject_s / 2,
            )
            if self.inject_s:
                self.hub.loop.call_later(self.inject_s / 2, self._deliver, epoch, reply)
            else:
                self._deliver(epoch, reply)
        elif message.get("type") == "error":
            self.errors += 1
            self.last_error = message
            if isinstance(message.get("request_id"), int):
                self._deliver(epoch, RequestFailed(message["request_id"], str(message.get("code"))))
