"""Python SDK for Headway's policy endpoint ``/`` (the openpi-compatible protocol).

    async with PolicyClient("ws://127.0.0.1:8000/", timeout_s=0.5) as policy:
        reply = await policy.infer({"state": state})     # reply["actions"]: float32[H, A]

    with SyncPolicyClient("ws://127.0.0.1:8000/") as policy:   # for code that is not async
        reply = policy.infer({"state": state})

Contracts:

* **Connect with retry.** ``connect()`` retries refused connections, 503 (server draining or
  starting) and ``at_capacity`` refusals with exponential backoff and jitter, up to
  ``connect_attempts`` times; any other HTTP answer to the handshake (401 wrong token, 404
  wrong path, 400 bad query, 403 origin) fails at once with :class:`HandshakeRefused`, which
  carries the status and the server's reason.
* **A timeout per request.** ``infer`` raises :class:`RequestTimeout` when no reply came
  within ``timeout_s``. The session is then closed and a new one opened on the next call:
  a reply that arrives late belongs to the dead connection and can never be read as the
  answer to a newer request. Every request also carries an ``id`` the server echoes, and a
  reply with a different ``id`` is refused.
* **Errors** the server reports become :class:`ServerError` with its ``code``
  (``deadline_exceeded``, ``superseded``, ``queue_full`` leave the session usable; others
  close it, and the next call reconnects).

Depends on ``websockets``, ``msgpack`` and ``numpy`` only (``wire`` is the codec).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from stream import wire

RETRYABLE_STATUS = {502, 503, 504}
NONFATAL_CODES = {"deadline_exceeded", "superseded", "queue_full"}


class ServerError(Exception):
    """The server answered with an error message (``code`` as in docs/protocol.md)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HandshakeRefused(InvalidStatus):
    """The server answered the websocket handshake with an HTTP error instead of a session.

    ``status`` is the HTTP status, ``reason`` the text the server sent with it (Headway says
    which endpoints exist, which token or model was wrong). Also an ``InvalidStatus``, so code
    that catches websockets' exception (``.response``) still does.
    """

    def __init__(self, url: str, response: Response):
        super().__init__(response)
        self.url = url
        self.status = response.status_code
        self.reason = bytes(response.body).decode("utf-8", "replace").strip()

    def __str__(self) -> str:
        reason = "".join(f"\n  {line}" for line in self.reason.splitlines())
        return (f"{self.url} refused the websocket handshake: HTTP {self.status} "
                f"{self.response.reason_phrase}{reason}")


class RequestTimeout(TimeoutError):
    """No reply within the request's timeout; the session was closed (next call reconnects)."""


class PolicyClient:
    """asyncio client for one policy session (see module docstring)."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000/",
        *,
        token: str | None = None,
        timeout_s: float = 1.0,
        connect_timeout_s: float = 10.0,
        connect_attempts: int = 8,
        backoff_s: float = 0.1,
        backoff_max_s: float = 5.0,
        max_size: int | None = 64 * 2**20,
    ):
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.connect_attempts = connect_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_size = max_size
        self.metadata: dict[str, Any] | None = None
        self.reconnects = 0  # sessions opened after the first (timeouts, server restarts)
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._opened = 0

    async def __aenter__(self) -> "PolicyClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """Open a session (retrying as described) and return the server's metadata."""
        delay = self.backoff_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                ws = await connect(self.url, compression=None, max_size=self.max_size,
                                   additional_headers=headers, open_timeout=self.connect_timeout_s)
                first = await asyncio.wait_for(ws.recv(), self.connect_timeout_s)
                if isinstance(first, str):
                    error = json.loads(first)
                    await ws.close()
                    raise ServerError(error.get("code", "unknown"), error.get("message", ""))
                self.metadata = wire.unpackb(first)
                self._ws = ws
                if self._opened:
                    self.reconnects += 1
                self._opened += 1
                return self.metadata
            except InvalidStatus as exc:
                if exc.response.status_code not in RETRYABLE_STATUS or attempt == self.connect_attempts:
                    raise HandshakeRefused(self.url, exc.response) from None
            except ServerError as exc:
                if exc.code != "at_capacity" or attempt == self.connect_attempts:
                    raise
            except (OSError, ConnectionClosed, asyncio.TimeoutError):
                if attempt == self.connect_attempts:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff_max_s)
        raise AssertionError("unreachable")

    async def infer(self, observation: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send one observation, return the reply (``actions``, ``server_timing``, ...).

        Raises :class:`RequestTimeout`, :class:`ServerError`, or ``ConnectionClosed`` when the
        server went away mid-request (the next call reconnects).
        """
        if self._ws is None:
            await self.connect()
        ws = self._ws
        assert ws is not None
        request_id = next(self._ids)
        try:
            await ws.send(wire.packb({**observation, "id": request_id}))
            frame = await asyncio.wait_for(ws.recv(), self.timeout_s if timeout_s is None else timeout_s)
        except asyncio.TimeoutError:
            await self._drop()
            raise RequestTimeout(f"no reply within {self.timeout_s if timeout_s is None else timeout_s} s; "
                                 "session closed, the next call reconnects") from None
        except ConnectionClosed:
            await self._drop()
            raise
        if isinstance(frame, str):
            error = json.loads(frame)
            code = error.get("code", "unknown")
            if code not in NONFATAL_CODES:
                await self._drop()
            raise ServerError(code, error.get("message", ""))
        reply = wire.unpackb(frame)
        if reply.get("id") != request_id:
            await self._drop()
            raise ServerError("bad_reply", f"reply id {reply.get('id')!r} does not match request {request_id}")
        return reply

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            # No closing handshake: the server may be the thing that is not answering.
            ws.transport.abort()

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()


class SyncPolicyClient:
    """Blocking wrapper around :class:`PolicyClient` for robot code that is not async.

    Runs a private event loop in a daemon thread; every method blocks until done and
    raises what the async method raised. Thread-safe (calls are serialised).
    """

    def __init__(self, url: str = "ws://127.0.0.1:8000/", **options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="headway-sdk", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._client = PolicyClient(url, **options)
        try:
            self._call(self._client.connect())
        except BaseException:
            self._stop()
            raise

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self._client.metadata

    def _call(self, coroutine) -> Any:
        with self._lock:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def infer(self, observation: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._call(self._client.infer(observation, timeout_s=timeout_s))

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._client.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "SyncPolicyClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
