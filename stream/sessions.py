"""Sessions: one object per websocket connection, one class per endpoint kind.

:class:`OpenpiSession` serves ``/``, the openpi-compatible policy protocol:

1. On connect the server sends the model's metadata as one binary frame (openpi's
   ``WebsocketClientPolicy`` reads it as ``get_server_metadata()``). A server at capacity
   instead sends an ``at_capacity`` error and closes with 1013.
2. Then each binary frame is an observation -- a bare map as openpi sends it (optionally
   with ``"type": "observation"`` and an ``id`` to echo) -- and gets one reply, in order:
   ``{"type": "actions", "actions": float32[H, A], "server_timing": {...}}``.
3. Errors travel as JSON **text** frames ``{"type": "error", "code", "message"}``: openpi's
   client raises ``RuntimeError`` on a text frame, which is how it recognises errors.
   ``deadline_exceeded``, ``superseded`` and ``queue_full`` leave the session open; bad
   input closes it with 1008 after the error; a model failure with 1011.

The reader keeps reading while earlier requests are in flight, so a newer observation can
replace a queued older one (the older is answered ``superseded``). Replies are written by
a separate writer task in request order. At most ``max_pending`` requests may await their
reply; past that the reader stops reading, so TCP pushes back on the client.

Query parameters of the connection URL: ``model`` (default: the server's first model) and
``budget_ms`` (default: the server's ``--budget-ms``), e.g. ``ws://host:8000/?budget_ms=50``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from stream import protocol
from stream.engine import Engine, EngineError, Result
from stream.protocol import ProtocolError

if TYPE_CHECKING:
    from stream.metrics import ServerMetrics
    from stream.registry import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A loaded model and its engine, as the server holds them."""

    model: "LoadedModel"
    engine: Engine


@dataclass
class _Pending:
    future: asyncio.Future | None  # None: a fatal error to report (``error``)
    request_id: Any
    arrival_ns: int
    deadline_ns: int
    error: ProtocolError | None = None
    context: Any = None  # what the session needs to build the reply (``_reply``)
    text: bool = False  # the request came as a JSON text frame: answer in kind


class OpenpiSession:
    """The ``/`` endpoint (see module docstring). ``run`` returns when the connection ends."""

    route = "/"

    def __init__(self, ws: ServerConnection, served: ServedModel, metrics: "ServerMetrics", *,
                 budget_s: float, max_pending: int = 8):
        self.ws = ws
        self.served = served
        self.metrics = metrics
        self.budget_s = budget_s
        self.max_pending = max_pending
        self.send_started_ns = 0  # nonzero while a send is in progress (slow-consumer watchdog)
        self._pending: deque[_Pending] = deque()
        self._wake_writer = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._draining = False
        self._closing = False
        self._prev_total_ms: float | None = None
        name = served.model.name
        self._replies = {}  # code -> bound counter, resolved lazily
        self._request_seconds = metrics.request_seconds.labels(name, self.route)
        self._model_name = name

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        engine = self.served.engine
        try:
            ticket = engine.open_session()
        except EngineError as exc:
            self.metrics.shed.labels(self._model_name, exc.code).inc()
            await self._send_error_and_close(ProtocolError(exc.code, exc.message))
            return
        gauge = self.metrics.open_sessions.labels(self._model_name, self.route)
        gauge.inc()
        writer = self._writer = asyncio.create_task(self._write())
        try:
            if await self._handshake():  # False: it already sent its error and closed
                await self._read(ticket)  # returns only after queueing a fatal error
                await writer  # sends the replies in flight, then the error, then closes
        except ConnectionClosed:
            pass
        finally:
            engine.close_session(ticket)
            gauge.dec()
            writer.cancel()
            for item in self._pending:  # answered but never sent: the client is gone
                if item.future is not None and item.future.done() and not item.future.cancelled():
                    item.future.exception()  # consumed, so asyncio does not log it

    def drain(self) -> None:
        """Stop taking observations; close with 1001 once the replies in flight are sent."""
        self._draining = True
        if not self._pending:
            self._close_soon(protocol.CLOSE_GOING_AWAY, "server shutting down")
        self._wake_writer.set()

    def abort_slow_consumer(self, grace_s: float) -> None:
        """Called by the server's watchdog when a reply has not been written for too long.

        The 1008 close frame is queued, but a client that does not read will not get it:
        after ``grace_s`` the TCP connection is dropped.
        """
        if self._closing:
            return
        self.metrics.shed.labels(self._model_name, "slow_consumer").inc()
        self._close_soon(protocol.CLOSE_BAD_INPUT, "client is not reading its replies")
        asyncio.get_running_loop().call_later(grace_s, self.ws.transport.abort)

    def _close_soon(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            asyncio.ensure_future(self.ws.close(code, reason))

    # -- reading ------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Open the session; False ends it (an error was already sent). ``/``: send the metadata."""
        metadata = {**self.served.model.metadata,
                    "observation": self.served.model.observation_spec.describe(),
                    "budget_ms": self.budget_s * 1000.0}
        await self.ws.send(protocol.encode_binary(metadata))
        return True

    def _parse(self, frame: bytes | str) -> tuple[Any, Any, float, bool, float | None, Any]:
        """One request frame -> (engine inputs, request id, budget s, allow degrade,
        soft latency target s or None, reply context).

        Raises ``ProtocolError`` for anything that must not reach the engine.
        """
        if isinstance(frame, str):
            raise ProtocolError("text_not_accepted", "this endpoint speaks msgpack binary frames "
                                                      "(openpi's wire format); text frames are refused")
        message = protocol.decode(frame)
        kind = protocol.message_type(message, default="observation")
        if kind != "observation":
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; "
                                                "this endpoint takes 'observation'")
        request_id = protocol.request_id(message)
        return self.served.model.observation_spec.validate(message), request_id, self.budget_s, False, None, None

    def _reply(self, item: _Pending, result: Result, timing: dict[str, Any]) -> dict[str, Any]:
        """The reply message for a request the model answered. ``/``: openpi's reply."""
        reply = {"type": "actions", **self.served.model.reply_fields(result.output), "server_timing": timing}
        if item.request_id is not None:
            reply["id"] = item.request_id
        return reply

    def _error_fields(self, item: _Pending) -> dict[str, Any]:
        return {} if item.request_id is None else {"id": item.request_id}

    def _engine_error(self, item: _Pending, code: str) -> None:
        """The engine answered ``item`` with an error instead of an output. ``/``: nothing to keep."""

    async def _read(self, ticket) -> None:
        engine = self.served.engine
        while True:
            while len(self._pending) >= self.max_pending:
                if self._writer.done():
                    return  # the connection is ending; nobody will make room
                self._room.clear()
                await self._room.wait()
            frame = await self.ws.recv()
            arrival = time.monotonic_ns()
            if self._draining:
                continue
            try:
                inputs, request_id, budget_s, degrade, target_s, context = self._parse(frame)
            except ProtocolError as exc:
                # Report after the replies already in flight, then close (writer does both).
                self._pending.append(_Pending(None, None, arrival, 0, exc))
                self._wake_writer.set()
                return
            future = engine.submit(ticket, inputs, budget_s=budget_s, arrival_ns=arrival, allow_degrade=degrade,
                                   target_s=target_s)
            self._pending.append(_Pending(future, request_id, arrival, arrival + int(budget_s * 1e9),
                                          context=context, text=isinstance(frame, str)))
            self._wake_writer.set()

    # -- writing ------------------------------------------------------------------------

    async def _write(self) -> None:
        try:
            await self._write_replies()
        except ConnectionClosed:
            pass
        finally:
            self._room.set()  # a reader waiting for room must see the connection's end

    async def _write_replies(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._draining:
                    self._close_soon(protocol.CLOSE_GOING_AWAY, "server shutting down")
                    return
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            item = pending[0]
            if item.error is not None:
                pending.popleft()
                self._count(item.error.code)
                await self._send_error_and_close(item.error)
                return
            try:
                result: Result = await item.future
            except EngineError as exc:
                pending.popleft()
                self._room.set()
                self._count(exc.code)
                self._engine_error(item, exc.code)
                await self._send(protocol.encode_text(protocol.error(exc.code, exc.message, **self._error_fields(item))))
                if protocol.ERROR_CLOSE_CODES[exc.code] is not None:
                    self._close_soon(protocol.ERROR_CLOSE_CODES[exc.code], exc.message[:120])
                    return
                continue
            except asyncio.CancelledError:
                if item.future.cancelled() and not asyncio.current_task().cancelling():
                    pending.popleft()  # dropped with the session
                    continue
                raise
            pending.popleft()
            self._room.set()
            now = time.monotonic_ns()
            total_ms = (now - item.arrival_ns) / 1e6
            timing = {
                "infer_ms": round(result.compute_ns / 1e6, 3),
                "queue_ms": round(result.queue_ns / 1e6, 3),
                "total_ms": round(total_ms, 3),
                "batch_size": result.batch_size,
                "degraded": result.degraded,
            }
            if self._prev_total_ms is not None:
                timing["prev_total_ms"] = self._prev_total_ms
            reply = self._reply(item, result, timing)
            await self._send(protocol.encode_text(reply) if item.text else protocol.encode_binary(reply))
            done = time.monotonic_ns()
            self._prev_total_ms = round((done - item.arrival_ns) / 1e6, 3)
            self._request_seconds.observe((done - item.arrival_ns) / 1e9)
            self._count("ok")
            if done > item.deadline_ns:
                self.metrics.deadline_misses.labels(self._model_name, "late_reply").inc()

    async def _send(self, frame: bytes | str) -> None:
        self.send_started_ns = time.monotonic_ns()
        try:
            await self.ws.send(frame)
        finally:
            self.send_started_ns = 0

    async def _send_error_and_close(self, error: ProtocolError) -> None:
        try:
            await self._send(protocol.encode_text(error.to_message()))
        except ConnectionClosed:
            return
        code = error.close_code or protocol.CLOSE_INTERNAL
        self._closing = True
        await self.ws.close(code, error.message[:120])

    def _count(self, code: str) -> None:
        counter = self._replies.get(code)
        if counter is None:
            counter = self._replies[code] = self.metrics.replies.labels(self._model_name, self.route, code)
        counter.inc()


class RealtimePolicySession(OpenpiSession):
    """The ``/v1/policy`` endpoint: real-time chunking for robot control loops.

    The logic lives in :class:`stream.realtime_session.RealtimeSessionState` (sans I/O);
    this class only moves its frames. The first frame must be a ``hello`` (binary or
    text, within ``hello_timeout_s``); the session answers ``ready`` with the model's
    metadata and the resolved strategy. Then each ``observation`` gets a ``chunk`` (or a
    non-fatal ``deadline_exceeded``/``superseded`` error), in the frame kind it came in.
    Messages: docs/policy-protocol.md.
    """

    route = "/v1/policy"
    hello_timeout_s = 10.0

    def __init__(self, ws: ServerConnection, served: ServedModel, metrics: "ServerMetrics", **kwargs: Any):
        super().__init__(ws, served, metrics, **kwargs)
        from stream.realtime_session import RealtimeSessionState

        meta = served.model.metadata
        self.state = RealtimeSessionState(served.model.observation_spec, horizon=int(meta["action_horizon"]),
                                          action_dim=int(meta["action_dim"]),
                                          control_hz=float(meta.get("control_hz", 50.0)))
        self._execution_horizon = metrics.execution_horizon.labels(served.model.name)

    async def _handshake(self) -> bool:
        try:
            frame = await asyncio.wait_for(self.ws.recv(), self.hello_timeout_s)
            settings = self.state.hello(protocol.decode(frame))
        except (ProtocolError, TimeoutError) as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(
                "missing_field", f"no hello within {self.hello_timeout_s:.0f} s")
            self._count(error.code)
            await self._send_error_and_close(error)
            return False
        meta = self.served.model.metadata
        model = {"name": self.served.model.name, "task": meta.get("task"), "family": meta.get("family"),
                 "horizon": meta["action_horizon"], "action_dim": meta["action_dim"],
                 "state_dim": meta.get("state_dim"), "control_hz": meta.get("control_hz"),
                 "num_steps": meta.get("num_steps")}
        ready = {"type": "ready", "model": model, "strategy": settings.describe()}
        await self.ws.send(protocol.encode_text(ready) if isinstance(frame, str) else protocol.encode_binary(ready))
        return True

    def _parse(self, frame: bytes | str) -> tuple[Any, Any, float, bool, float | None, Any]:
        message = protocol.decode(frame)
        kind = protocol.message_type(message)
        if kind != "observation":
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes 'observation'")
        prepared = self.state.observation(message)
        return (prepared.inputs, prepared.request_id, prepared.budget_s, self.state.settings.degrade,
                prepared.target_s, prepared)

    def _reply(self, item: _Pending, result: Result, timing: dict[str, Any]) -> dict[str, Any]:
        server_s = (time.monotonic_ns() - item.arrival_ns) / 1e9
        fields = self.state.completed(item.context, result.output, server_s, result.queue_ns / 1e9,
                                      result.compute_ns / 1e9, result.degraded)
        self._execution_horizon.observe(fields["s"])
        return {"type": "chunk", **fields, "degraded": result.degraded, "timing": timing}

    def _engine_error(self, item: _Pending, code: str) -> None:
        self.state.failed(item.context, code)

    def _error_fields(self, item: _Pending) -> dict[str, Any]:
        return {} if item.request_id is None else {"request_id": item.request_id}
