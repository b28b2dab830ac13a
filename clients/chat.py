"""asyncio client for ``/v1/chat``: stream a prompt in pieces, read the reply as it is generated.

    async with ChatClient("ws://127.0.0.1:8000/v1/chat", context="a red cube at the left") as chat:
        await chat.say("go to the ")          # pieces as the user types or speaks
        await chat.say("red cube")
        done = await chat.end()               # prompt_end; the tokens, then "done"
        print(done["text"], done["ttft_ms"], chat.tokens)

``say`` sends a ``prompt_delta``; ``end`` sends ``prompt_end`` and returns the ``done``
message once the reply is complete (``tokens`` then holds that reply's ``token`` messages,
each with the time it arrived); ``cancel`` stops a reply being generated (barge-in) and
returns its ``done``. A handshake the server refuses raises
:class:`clients.sdk.HandshakeRefused`; an ``error`` message from the server raises
:class:`clients.sdk.ServerError`. The protocol: docs/chat-protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.sdk import HandshakeRefused, ServerError
from stream import wire


class ChatClient:
    """One ``/v1/chat`` session (see the module docstring)."""

    def __init__(self, url: str = "ws://127.0.0.1:8000/v1/chat", *, token: str | None = None,
                 context: str | dict | None = None, history: list[dict[str, str]] | None = None,
                 sampling: dict[str, Any] | None = None, max_tokens: int | None = None,
                 incremental: bool = True, early_answer: bool = False, timeout_s: float = 60.0):
        self.url = url
        self.token = token
        self.hello: dict[str, Any] = {"type": "hello"}
        for name, value in (("context", context), ("history", history), ("sampling", sampling),
                            ("max_tokens", max_tokens)):
            if value is not None:
                self.hello[name] = value
        if not incremental:
            self.hello["incremental"] = False
        if early_answer:
            self.hello["early_answer"] = True
        self.timeout_s = timeout_s
        self.ready: dict[str, Any] | None = None
        self.tokens: list[dict[str, Any]] = []  # the last reply's token messages, each with "t" (monotonic s)
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> "ChatClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """Open the session; returns the server's ``ready``."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._ws = await connect(self.url, compression=None, additional_headers=headers)
        except InvalidStatus as exc:
            raise HandshakeRefused(self.url, exc.response) from None
        try:
            await self._ws.send(wire.packb(self.hello))
        except ConnectionClosed:
            pass  # refused at admission (at capacity, draining): its error frame is read next
        try:
            self.ready = await self._receive()
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd is not None else "connection closed"
            raise ServerError("closed", reason) from None
        return self.ready

    async def say(self, text: str) -> None:
        """A piece of prompt (``prompt_delta``)."""
        await self._ws.send(wire.packb({"type": "prompt_delta", "text": text}))

    async def pause(self) -> None:
        """``prompt_pause``: the user paused (a speech recogniser's cue); with early answer on,
        the server starts decoding on the guess that the prompt is complete."""
        await self._ws.send(wire.packb({"type": "prompt_pause"}))

    async def end(self) -> dict[str, Any]:
        """``prompt_end``; returns the reply's ``done`` (its tokens are in ``self.tokens``)."""
        await self.end_prompt()
        return await self.reply()

    async def end_prompt(self) -> None:
        """``prompt_end`` only: read the reply with :meth:`next_token` or :meth:`reply`."""
        self.tokens = []
        await self._ws.send(wire.packb({"type": "prompt_end"}))

    async def next_token(self) -> dict[str, Any]:
        """The next ``token`` (kept in ``self.tokens``), or the turn's ``done``."""
        message = await self._receive()
        if message["type"] == "token":
            message["t"] = time.monotonic()
            self.tokens.append(message)
        return message

    async def cancel(self) -> dict[str, Any]:
        """Stop the reply being generated; returns the turn's ``done`` (``finish_reason``
        "cancelled", or how it ended if it ended first). Call it before reading that ``done``."""
        await self._ws.send(wire.packb({"type": "cancel"}))
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        """Read ``token`` messages into ``self.tokens`` until the turn's ``done``; returns it."""
        while True:
            message = await self.next_token()
            if message["type"] == "done":
                return message

    async def ask(self, prompt: str) -> dict[str, Any]:
        """The whole prompt as one piece, then its reply's ``done``."""
        await self.say(prompt)
        return await self.end()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _receive(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self._ws.recv(), self.timeout_s)
        message = wire.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
        if message.get("type") == "error":
            raise ServerError(message.get("code", "unknown"), message.get("message", ""))
        return message
