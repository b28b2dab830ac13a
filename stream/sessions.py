"""The I/O pump: the only code that touches a session's socket (websockets' asyncio server).

One :class:`SessionPump` per connection moves frames between the socket and the endpoint's
sans-I/O protocol (:mod:`stream.session_protocols`) and carries out what the protocol asks:
``Send`` (one writer task, in order), ``Submit`` (``engine.submit``; the outcome goes back to
the protocol from the future's done-callback, on the loop), ``CancelQueued``
(``engine.cancel_queued``), ``PromoteQueued`` (``engine.promote_queued``), ``Close``. It admits the session
with the engine first (a refusal is answered by the protocol: ``at_capacity``, 1013), stops
reading while the protocol is ``paused`` (TCP pushes back on the client), and keeps the
metrics. Another transport needs only a socket with ``recv``/``send``/``close`` that raises
websockets' ``ConnectionClosed`` (the ASGI adapter, :class:`stream.asgi.AsgiSocket`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from stream.engine import Engine
from stream.errors import CLOSE_BAD_INPUT, ProtocolError
from stream.session_actions import Action, CancelQueued, Close, PromoteQueued, Send, Submit, Wake
from stream.session_protocols import SessionProtocol

if TYPE_CHECKING:
    from stream.metrics import ServerMetrics
    from stream.registry import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A loaded model and its engine, as the server holds them."""

    model: "LoadedModel"
    engine: Engine


class SessionPump:
    """Runs one connection: ``await run()`` returns when it has ended."""

    def __init__(self, ws: ServerConnection, protocol: SessionProtocol, served: ServedModel,
                 metrics: "ServerMetrics"):
        self.ws = ws
        self.protocol = protocol
        self.engine = served.engine
        self.metrics = metrics
        self.route = protocol.route
        self.send_started_ns = 0  # nonzero while a send is in progress (slow-consumer watchdog)
        self._model_name = served.model.name
        self._outbox: deque[Send | Close] = deque()
        self._wake_writer = asyncio.Event()
        self._room = asyncio.Event()
        self._futures: set[asyncio.Future] = set()
        self._ticket = None
        self._closing = False
        self._ended = False  # run() has returned: a Wake due later does nothing
        self._replies = {}  # code -> bound counter, resolved lazily
        self._request_seconds = metrics.request_seconds.labels(self._model_name, self.route)
        self._execution_horizon = metrics.execution_horizon.labels(self._model_name)
        self._ttft = metrics.chat_ttft_seconds.labels(self._model_name)

    async def run(self) -> None:
        try:
            self._ticket = self.engine.open_session(stepped=self.protocol.stepped)
        except ProtocolError as exc:
            self.metrics.shed.labels(self._model_name, exc.code).inc()
            self._perform(self.protocol.refused(exc))
            await self._write()
            return
        gauge = self.metrics.open_sessions.labels(self._model_name, self.route)
        gauge.inc()
        writer = asyncio.create_task(self._write())
        try:
            self._perform(self.protocol.opened())
            if self.protocol.hello_timeout_s is not None:
                try:
                    frame = await asyncio.wait_for(self.ws.recv(), self.protocol.hello_timeout_s)
                    self._perform(self.protocol.received(frame, time.monotonic_ns()))
                except TimeoutError:
                    self._perform(self.protocol.hello_timed_out())
            while not self.protocol.closing:
                while self.protocol.paused and not writer.done():
                    self._room.clear()
                    await self._room.wait()
                frame = await self.ws.recv()
                self._perform(self.protocol.received(frame, time.monotonic_ns()))
            await writer  # the replies owed, then the error, then the close
        except ConnectionClosed:
            pass
        finally:
            self._ended = True
            self.engine.close_session(self._ticket)
            gauge.dec()
            writer.cancel()
            for future in self._futures:  # answered but never sent: the client is gone
                if future.done() and not future.cancelled():
                    future.exception()  # consumed, so asyncio does not log it

    def drain(self) -> None:
        """Stop taking requests; close with 1001 once the replies owed are sent."""
        self._perform(self.protocol.drain())
        self._room.set()

    def abort_slow_consumer(self, grace_s: float) -> None:
        """Called by the server's watchdog when a reply has not been written for too long.

        The 1008 close frame is queued, but a client that does not read will not get it:
        after ``grace_s`` the TCP connection is dropped.
        """
        if self._closing:
            return
        self._closing = True
        self.metrics.shed.labels(self._model_name, "slow_consumer").inc()
        asyncio.ensure_future(self.ws.close(CLOSE_BAD_INPUT, "client is not reading its replies"))
        asyncio.get_running_loop().call_later(grace_s, self.ws.transport.abort)

    # -- carrying out the protocol's actions ---------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Submit):
                future = self.engine.submit(self._ticket, action.inputs, budget_s=action.budget_s,
                                            arrival_ns=action.arrival_ns, allow_degrade=action.allow_degrade,
                                            target_s=action.target_s, lane=action.lane)
                self._futures.add(future)
                future.add_done_callback(partial(self._answered, action.key))
            elif isinstance(action, CancelQueued):
                self.engine.cancel_queued(self._ticket)
            elif isinstance(action, PromoteQueued):
                self.engine.promote_queued(self._ticket, action.lane)
            elif isinstance(action, Wake):
                delay = max(0.0, (action.at_ns - time.monotonic_ns()) / 1e9)
                asyncio.get_running_loop().call_later(delay, self._woke)
            else:
                self._outbox.append(action)
                self._wake_writer.set()

    def _woke(self) -> None:
        if self._ended or self._closing or self.protocol.closing:
            return
        self._perform(self.protocol.woke(time.monotonic_ns()))  # type: ignore[attr-defined]

    def _answered(self, key: int, future: asyncio.Future) -> None:
        self._futures.discard(future)
        if future.cancelled():  # dropped with the session
            return
        outcome = future.exception() or future.result()
        self._perform(self.protocol.answered(key, outcome, time.monotonic_ns()))
        if not self.protocol.paused:
            self._room.set()

    async def _write(self) -> None:
        try:
            while True:
                if not self._outbox:
                    self._wake_writer.clear()
                    await self._wake_writer.wait()
                    continue
                action = self._outbox.popleft()
                if isinstance(action, Close):
                    self._closing = True
                    await self.ws.close(action.code, action.reason)
                    return
                await self._send(action)
        except ConnectionClosed:
            pass
        finally:
            self._room.set()  # a reader waiting for room must see the connection's end

    async def _send(self, action: Send) -> None:
        self.send_started_ns = time.monotonic_ns()
        try:
            await self.ws.send(action.frame)
        finally:
            self.send_started_ns = 0
        if action.prompt_end_ns is not None:
            self._ttft.observe((time.monotonic_ns() - action.prompt_end_ns) / 1e9)
        if action.code is None:
            return
        self._count(action.code)
        if action.s is not None:
            self._execution_horizon.observe(action.s)
        if action.arrival_ns is not None:
            done = time.monotonic_ns()
            self._request_seconds.observe((done - action.arrival_ns) / 1e9)
            if action.deadline_ns is not None and done > action.deadline_ns:
                self.metrics.deadline_misses.labels(self._model_name, "late_reply").inc()

    def _count(self, code: str) -> None:
        counter = self._replies.get(code)
        if counter is None:
            counter = self._replies[code] = self.metrics.replies.labels(self._model_name, self.route, code)
        counter.inc()
