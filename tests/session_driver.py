"""A driver that runs one sans-I/O session protocol against a real :class:`Engine` on this
loop without a socket, the way :class:`stream.sessions.SessionPump` does: admission, submits
whose answers go back to the protocol, cancels, sends decoded back to dicts, the close. Its
clock ``now_ns`` is virtual: a ``Wake`` is kept and :meth:`SessionDriver.run` jumps the clock
to it, so that pacing is exercised without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from stream import wire
from stream.engine import Engine
from stream.errors import ProtocolError
from stream.session_actions import CancelQueued, Close, Send, Submit, Wake


@dataclass
class Driven:
    """What a driven session sent and how it ended."""

    messages: list[dict] = field(default_factory=list)  # control messages, decoded
    audio: list[bytes] = field(default_factory=list)  # binary audio frames (with ``audio_out``)
    events: list[tuple[int, str]] = field(default_factory=list)  # (clock ns, "audio" | message type)
    closed: tuple[int, str] | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    def words(self) -> list[tuple[str, float, float]]:
        """(text, start, end) of the recogniser's ``word_end`` messages."""
        return [(m["text"], m["start"], m["end"]) for m in self.of_type("word_end")]


class SessionDriver:
    """``audio_out``: binary frames the session sends are audio (``/v1/tts``), kept raw in
    ``out.audio``; else they are msgpack messages (moshi's protocols) and decoded."""

    def __init__(self, engine: Engine, protocol: Any, *, audio_out: bool = False):
        self.engine, self.protocol = engine, protocol
        self.audio_out = audio_out
        self.out = Driven()
        self.now_ns = 0
        self.pending: set[asyncio.Future] = set()
        self.wakes: list[int] = []
        self.ticket = None
        try:
            self.ticket = engine.open_session(stepped=True)
        except ProtocolError as exc:
            self._perform(protocol.refused(exc))
            return
        self._perform(protocol.opened())

    def send(self, frame: bytes | str) -> None:
        self._perform(self.protocol.received(frame, self.now_ns))

    def send_json(self, message: dict) -> None:
        self.send(json.dumps(message))

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until nothing the session submitted is outstanding."""
        async def idle():
            while self.pending:
                await asyncio.sleep(0.002)
        await asyncio.wait_for(idle(), timeout)

    async def run(self, until=None, timeout: float = 60.0) -> None:
        """Answer steps and wakes until the session closes (or ``until()`` holds, or nothing is left)."""
        async def loop():
            while self.out.closed is None and not (until and until()):
                if self.pending:
                    await asyncio.sleep(0.001)
                elif self.wakes:
                    self.now_ns = max(self.now_ns, min(self.wakes))
                    self.wakes.remove(min(self.wakes))
                    self._perform(self.protocol.woke(self.now_ns))
                else:
                    return
        await asyncio.wait_for(loop(), timeout)

    def close(self) -> None:
        if self.ticket is not None:
            self.engine.close_session(self.ticket)
            self.ticket = None

    def _perform(self, actions) -> None:
        for action in actions:
            if isinstance(action, Submit):
                future = self.engine.submit(self.ticket, action.inputs, budget_s=action.budget_s, lane=action.lane)
                self.pending.add(future)
                future.add_done_callback(lambda f, key=action.key: self._answered(key, f))
            elif isinstance(action, CancelQueued):
                self.engine.cancel_queued(self.ticket)
            elif isinstance(action, Wake):
                self.wakes.append(action.at_ns)
            elif isinstance(action, Send):
                frame = action.frame
                if isinstance(frame, str):
                    message = json.loads(frame)
                elif not self.audio_out:
                    message = wire.unpackb(frame)
                else:
                    self.out.audio.append(frame)
                    self.out.events.append((self.now_ns, "audio"))
                    continue
                self.out.messages.append(message)
                self.out.events.append((self.now_ns, message.get("type")))
            elif isinstance(action, Close):
                self.out.closed = (action.code, action.reason)

    def _answered(self, key: int, future: asyncio.Future) -> None:
        self.pending.discard(future)
        if future.cancelled():
            return
        outcome = future.exception() or future.result()
        self._perform(self.protocol.answered(key, outcome, self.now_ns))
