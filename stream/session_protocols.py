"""Session protocols, sans I/O: one class per endpoint, no socket, no clock, no engine.

Like websockets' ``Protocol``, a session protocol takes what happened -- a frame received,
an engine result, a drain -- and returns what to do as a list of actions:

* :class:`Send` a frame (in order; the pump keeps the order),
* :class:`Submit` a request to the engine (its outcome comes back via :meth:`answered`),
* :class:`CancelQueued`: drop the session's requests the engine has not started,
* :class:`Close` the connection with a code.

(The actions are defined in :mod:`stream.session_actions`.)

The I/O pump (:mod:`stream.sessions`) is the only code that touches the socket; it calls
``opened()`` once admitted (or ``refused(error)``), ``received(frame, now_ns)`` per frame,
``answered(key, outcome, now_ns)`` per engine outcome and ``drain()`` on shutdown, and
stops reading while ``paused`` (too many replies owed: TCP pushes back on the client).

Replies go out in request order. An error that ends the session (bad input) is reported
after the replies already in flight, then the connection closes with the error's code;
``deadline_exceeded``, ``superseded`` and ``queue_full`` leave the session open.

:class:`OpenpiProtocol` serves ``/`` (openpi's policy protocol, docs/protocol.md);
:class:`RealtimePolicyProtocol` serves ``/v1/policy`` (docs/policy-protocol.md), with
:class:`stream.realtime_session.RealtimeSessionState` keeping the robot's chunk state;
:class:`stream.chat_session.ChatProtocol` serves ``/v1/chat`` (docs/chat-protocol.md);
:class:`stream.asr_session.AsrProtocol` and :class:`stream.asr_session.MoshiAsrProtocol` serve
``/v1/asr`` and ``/api/asr-streaming`` (docs/protocol.md). A route serves the models its class
``serves``: policies at the first two, chat models at ``/v1/chat``, speech recognisers at
``/v1/asr`` and ``/api/asr-streaming``; :class:`stream.tts_session.TtsProtocol` and
:class:`stream.tts_session.MoshiTtsProtocol` serve speech synthesisers at ``/v1/tts`` and
``/api/tts_streaming``.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stream import protocol
from stream.asr_session import AsrProtocol, MoshiAsrProtocol
from stream.chat_session import ChatProtocol
from stream.tts_session import MoshiTtsProtocol, TtsProtocol
from stream.engine import Result
from stream.errors import CLOSE_GOING_AWAY, ProtocolError
from stream.session_actions import (  # noqa: F401  (re-exported)
    Action, CancelQueued, Close, Send, Submit, report_and_close)
if TYPE_CHECKING:
    from stream.realtime_session import PreparedRequest
    from stream.registry import LoadedModel


class SessionProtocol(Protocol):
    """What the pump needs of an endpoint's protocol (one class per route in :data:`ROUTES`)."""

    route: str
    stepped: bool  # the session holds a state slot of its model (admitted with one, 1013 without)
    hello_timeout_s: float | None  # the first frame must come within this (None: no limit)
    closing: bool

    @classmethod
    def serves(cls, model: "LoadedModel") -> bool: ...

    @property
    def paused(self) -> bool: ...

    def refused(self, error: ProtocolError) -> list[Action]: ...

    def opened(self) -> list[Action]: ...

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]: ...

    def answered(self, key: int, outcome: Result | ProtocolError, now_ns: int) -> list[Action]: ...

    def drain(self) -> list[Action]: ...

    def hello_timed_out(self) -> list[Action]: ...


@dataclass
class _Owed:
    """A reply owed to the client, in request order."""

    key: int
    request_id: Any
    arrival_ns: int
    deadline_ns: int
    text: bool  # the request came as a JSON text frame: answer in kind
    context: Any = None  # what the protocol needs to build the reply
    outcome: Result | ProtocolError | None = None
    fatal: bool = False  # an error that ends the session once it is sent


@dataclass
class _ParsedRequest:
    inputs: Any
    request_id: Any
    budget_s: float
    allow_degrade: bool = False
    target_s: float | None = None
    context: Any = None


@dataclass
class _Replies:
    """The ordered queue of owed replies shared by the request/reply protocols."""

    owed: deque[_Owed] = field(default_factory=deque)
    prev_total_ms: float | None = None


class RequestReplyProtocol:
    """What ``/`` and ``/v1/policy`` share: one request per frame, one reply per request, in
    order. An endpoint says how a frame becomes a request (``_parse``), how a result becomes
    its reply (``_reply``) and what its errors carry (``_error_fields``)."""

    route: str
    stepped = False
    hello_timeout_s: float | None = None

    def __init__(self, model: "LoadedModel", *, budget_s: float, max_pending: int = 8):
        self.model = model
        self.budget_s = budget_s
        self.max_pending = max_pending
        self.closing = False
        self.draining = False
        self._replies = _Replies()
        self._keys = itertools.count()

    @classmethod
    def serves(cls, model: "LoadedModel") -> bool:
        """Policies, not chat models or speech models."""
        return model.chat is None and model.asr is None and model.tts is None

    # -- what the pump calls --------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return len(self._replies.owed) >= self.max_pending

    def refused(self, error: ProtocolError) -> list[Action]:
        """Admission failed (at capacity, shutting down), or the session cannot start: say
        why and close."""
        self.closing = True
        return report_and_close(error)

    def opened(self) -> list[Action]:
        return []

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing or self.draining:
            return []
        key = next(self._keys)
        try:
            parsed = self._parse(frame)
        except ProtocolError as exc:  # reported after the replies in flight, then close
            self.closing = True
            self._replies.owed.append(_Owed(key, None, now_ns, 0, True, outcome=exc, fatal=True))
            return self._flush(now_ns)
        self._replies.owed.append(_Owed(key, parsed.request_id, now_ns, now_ns + int(parsed.budget_s * 1e9),
                                        isinstance(frame, str), parsed.context))
        return [Submit(key, parsed.inputs, parsed.budget_s, now_ns, parsed.allow_degrade, parsed.target_s)]

    def answered(self, key: int, outcome: Result | ProtocolError, now_ns: int) -> list[Action]:
        for owed in self._replies.owed:
            if owed.key == key:
                owed.outcome = outcome
                break
        return self._flush(now_ns)

    def drain(self) -> list[Action]:
        """Take no more requests; close with 1001 once the replies owed are sent."""
        self.draining = True
        if not self._replies.owed and not self.closing:
            self.closing = True
            return [Close(CLOSE_GOING_AWAY, "server shutting down")]
        return []

    def hello_timed_out(self) -> list[Action]:
        return []

    # -- per endpoint ---------------------------------------------------------------------

    def _parse(self, frame: bytes | str) -> _ParsedRequest:
        raise NotImplementedError

    def _reply(self, owed: _Owed, result: Result, timing: dict[str, Any], now_ns: int) -> dict[str, Any]:
        raise NotImplementedError

    def _error_fields(self, owed: _Owed) -> dict[str, Any]:
        raise NotImplementedError

    def _engine_error(self, owed: _Owed, code: str) -> None:
        """The engine answered ``owed`` with an error instead of an output (default: nothing to keep)."""

    # -- in-order replies -------------------------------------------------------------------

    def _flush(self, now_ns: int) -> list[Action]:
        """Every reply at the head of the queue whose outcome is known, in order."""
        actions: list[Action] = []
        owed_queue = self._replies.owed
        while owed_queue and owed_queue[0].outcome is not None:
            owed = owed_queue.popleft()
            outcome = owed.outcome
            if isinstance(outcome, ProtocolError):
                if not owed.fatal:
                    self._engine_error(owed, outcome.code)
                fields = {} if owed.fatal else self._error_fields(owed)
                actions.append(Send(protocol.encode_text(outcome.to_message(**fields)), outcome.code))
                if outcome.close_code is not None:
                    self.closing = True
                    owed_queue.clear()
                    actions.append(Close(outcome.close_code, outcome.message[:120]))
                    return actions
                continue
            total_ms = (now_ns - owed.arrival_ns) / 1e6
            timing = {"infer_ms": round(outcome.compute_ns / 1e6, 3), "queue_ms": round(outcome.queue_ns / 1e6, 3),
                      "total_ms": round(total_ms, 3), "batch_size": outcome.batch_size,
                      "degraded": outcome.degraded}
            if self._replies.prev_total_ms is not None:
                timing["prev_total_ms"] = self._replies.prev_total_ms
            self._replies.prev_total_ms = round(total_ms, 3)
            reply = self._reply(owed, outcome, timing, now_ns)
            frame = protocol.encode_text(reply) if owed.text else protocol.encode_binary(reply)
            actions.append(Send(frame, "ok", owed.arrival_ns, owed.deadline_ns, reply.get("s")))
        if self.draining and not owed_queue and not self.closing:
            self.closing = True
            actions.append(Close(CLOSE_GOING_AWAY, "server shutting down"))
        return actions


class OpenpiProtocol(RequestReplyProtocol):
    """``/``: on connect, the model's metadata; then one reply per observation, in order.

    Observations are binary msgpack maps as openpi's client sends them (a bare map, or with
    ``"type": "observation"`` and an ``id`` to echo); errors travel as JSON text frames
    (openpi's client raises on a text frame).
    """

    route = "/"

    def opened(self) -> list[Action]:
        metadata = {**self.model.metadata, "observation": self.model.observation_spec.describe(),
                    "budget_ms": self.budget_s * 1000.0}
        return [Send(protocol.encode_binary(metadata))]

    def _parse(self, frame: bytes | str) -> _ParsedRequest:
        if isinstance(frame, str):
            raise ProtocolError("text_not_accepted", "this endpoint speaks msgpack binary frames "
                                                      "(openpi's wire format); text frames are refused")
        message = protocol.decode(frame)
        kind = protocol.message_type(message, default="observation")
        if kind != "observation":
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes 'observation'")
        request_id = protocol.request_id(message)
        return _ParsedRequest(self.model.observation_spec.validate(message), request_id, self.budget_s)

    def _reply(self, owed: _Owed, result: Result, timing: dict[str, Any], now_ns: int) -> dict[str, Any]:
        reply = {"type": "actions", **self.model.reply_fields(result.output), "server_timing": timing}
        if owed.request_id is not None:
            reply["id"] = owed.request_id
        return reply

    def _error_fields(self, owed: _Owed) -> dict[str, Any]:
        return {} if owed.request_id is None else {"id": owed.request_id}


class RealtimePolicyProtocol(RequestReplyProtocol):
    """``/v1/policy``: real-time chunking for robot control loops (docs/policy-protocol.md).

    The first frame must be a ``hello`` (binary or text, within ``hello_timeout_s``); it is
    answered ``ready`` with the model's metadata and the resolved strategy, in the frame
    kind it came in. Then each ``observation`` gets a ``chunk`` (or a non-fatal
    ``deadline_exceeded``/``superseded`` error).
    """

    route = "/v1/policy"
    hello_timeout_s = 10.0

    def __init__(self, model: "LoadedModel", *, budget_s: float, max_pending: int = 8):
        super().__init__(model, budget_s=budget_s, max_pending=max_pending)
        from stream.realtime_session import RealtimeSessionState  # its delay estimator imports torch

        meta = model.metadata
        self.state = RealtimeSessionState(model.observation_spec, horizon=int(meta["action_horizon"]),
                                          action_dim=int(meta["action_dim"]),
                                          control_hz=float(meta.get("control_hz", 50.0)))
        self.ready = False

    def opened(self) -> list[Action]:
        return []  # the client speaks first

    def hello_timed_out(self) -> list[Action]:
        return self.refused(ProtocolError("missing_field", f"no hello within {self.hello_timeout_s:.0f} s"))

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.ready or self.closing:
            return super().received(frame, now_ns)
        meta = self.model.metadata
        try:
            settings = self.state.hello(protocol.decode(frame))
            if settings.future_state and not meta.get("future_state", False):
                raise ProtocolError("unsupported", f"future_state: model {self.model.name!r} has no future-state "
                                                   "rollout (its policy declares none); send future_state false")
        except ProtocolError as exc:
            return self.refused(exc)
        self.ready = True
        model = {"name": self.model.name, "task": meta.get("task"), "family": meta.get("family"),
                 "horizon": meta["action_horizon"], "action_dim": meta["action_dim"],
                 "state_dim": meta.get("state_dim"), "control_hz": meta.get("control_hz"),
                 "num_steps": meta.get("num_steps"), "future_state": meta.get("future_state", False)}
        ready = {"type": "ready", "model": model, "strategy": settings.describe()}
        return [Send(protocol.encode_text(ready) if isinstance(frame, str) else protocol.encode_binary(ready))]

    def _parse(self, frame: bytes | str) -> _ParsedRequest:
        message = protocol.decode(frame)
        kind = protocol.message_type(message)
        if kind != "observation":
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes 'observation'")
        prepared = self.state.observation(message)
        return _ParsedRequest(prepared.inputs, prepared.request_id, prepared.budget_s,
                              self.state.settings.degrade, prepared.target_s, prepared)

    def _reply(self, owed: _Owed, result: Result, timing: dict[str, Any], now_ns: int) -> dict[str, Any]:
        prepared: "PreparedRequest" = owed.context
        server_s = (now_ns - owed.arrival_ns) / 1e9
        fields = self.state.completed(prepared, result.output, server_s, result.queue_ns / 1e9,
                                      result.compute_ns / 1e9, result.degraded)
        return {"type": "chunk", **fields, "degraded": result.degraded, "timing": timing}

    def _engine_error(self, owed: _Owed, code: str) -> None:
        self.state.failed(owed.context, code)

    def _error_fields(self, owed: _Owed) -> dict[str, Any]:
        return {} if owed.request_id is None else {"request_id": owed.request_id}


ROUTES: dict[str, type[SessionProtocol]] = {"/": OpenpiProtocol, "/v1/policy": RealtimePolicyProtocol,
                                            "/v1/chat": ChatProtocol,
                                            "/v1/asr": AsrProtocol, "/api/asr-streaming": MoshiAsrProtocol,
                                            "/v1/tts": TtsProtocol, "/api/tts_streaming": MoshiTtsProtocol}
