"""The ASGI transport: the same sessions behind an ASGI server (uvicorn, Ray Serve's ingress).

Beside the websockets server (:mod:`stream.server`), this adapter serves a
:class:`~stream.server.HeadwayServer`'s endpoints through Starlette's websocket: the same
sans-I/O protocols, the same :class:`~stream.sessions.SessionPump`, the same engines and
metrics. Only the socket differs, so :class:`AsgiSocket` is all the adapter is, plus the
routes:

* ``GET /healthz`` (503 while draining) and ``GET /metrics`` (the token when one is set);
* every websocket path: refused before ``accept`` with the same HTTP status and body as the
  websockets server gives (404, 401, 400, 503) through the ASGI websocket denial response
  (servers without it -- the refusal then is a 403 -- still refuse), else one session.

:func:`starlette_app` builds a Starlette app whose lifespan starts the engines and drains
on shutdown (``uvicorn`` runs it: ``pip install 'headway[asgi]'``). Ray Serve's replicas
(:mod:`stream.ray_deploy`) call :class:`HeadwayAsgi` from their FastAPI routes.

Transport settings the websockets server sets per connection (``max_size``, compression,
keepalive, the kernel send buffer) belong to the ASGI server here: :func:`uvicorn_config`
sets uvicorn's equivalents.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketState
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from stream.errors import CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART
from stream.metrics import CONTENT_TYPE
from stream.server import HeadwayServer

log = logging.getLogger(__name__)


class _Transport:
    """What the slow-consumer watchdog aborts: here, the ASGI connection is closed."""

    def __init__(self, socket: "AsgiSocket"):
        self._socket = socket

    def abort(self) -> None:
        asyncio.ensure_future(self._socket.close(1008, "client is not reading its replies"))


class AsgiSocket:
    """A Starlette websocket as :class:`~stream.sessions.SessionPump` uses a socket.

    ``recv`` returns a bytes or text frame and raises websockets' ``ConnectionClosed`` once
    the client has gone, as the websockets server does, so the pump needs no second path.
    """

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self.transport = _Transport(self)
        self._closed: Close | None = None

    async def recv(self) -> bytes | str:
        if self._closed is not None:
            raise ConnectionClosed(self._closed, None)
        try:
            message = await self.websocket.receive()
        except RuntimeError:  # receive after the disconnect was already taken
            self._closed = Close(1006, "")
            raise ConnectionClosed(self._closed, None) from None
        if message["type"] == "websocket.disconnect":
            self._closed = Close(message.get("code", 1005), message.get("reason") or "")
            raise ConnectionClosed(self._closed, None)
        data = message.get("bytes")
        return data if data is not None else message.get("text", "")

    async def send(self, frame: bytes | str) -> None:
        if self._closed is not None or self.websocket.application_state != WebSocketState.CONNECTED:
            raise ConnectionClosed(self._closed, None)
        try:
            if isinstance(frame, str):
                await self.websocket.send_text(frame)
            else:
                await self.websocket.send_bytes(frame)
        except (RuntimeError, OSError) as exc:  # the server already saw the client go
            self._closed = self._closed or Close(1006, "")
            raise ConnectionClosed(self._closed, None) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            await self.websocket.close(code, reason)
        except (RuntimeError, OSError):
            pass


class HeadwayAsgi:
    """A :class:`HeadwayServer`'s endpoints for an ASGI server; ``await start()`` before the
    first request, ``await drain()`` on shutdown."""

    def __init__(self, server: HeadwayServer):
        self.server = server
        self._watchdog: asyncio.Task | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._drained = asyncio.Event()

    async def start(self) -> None:
        """Start the engines on the running loop (once; later calls wait for the first)."""
        async with self._start_lock:
            if self._started:
                return
            await self.server.start_engines()
            self._watchdog = asyncio.create_task(self.server._watch_slow_consumers())
            self._started = True

    async def drain(self, timeout_s: float | None = None) -> None:
        """Refuse new sessions, let each send the replies it owes and close with 1001, then
        stop the engines (the websockets server's drain, without a listener to close)."""
        server = self.server
        if server.draining:
            await self._drained.wait()
            return
        server.draining = True
        log.info("draining: %d sessions open", len(server.sessions))
        for session in list(server.sessions):
            session.drain()
        deadline = asyncio.get_running_loop().time() + (timeout_s or server.config.drain_timeout_s)
        while server.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for session in list(server.sessions):  # past the timeout: closed, replies or not
            await session.ws.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._started:
            for served in server.served.values():
                await served.engine.stop()
        self._drained.set()
        log.info("drained")

    # -- HTTP ---------------------------------------------------------------------------

    def healthz(self) -> Response:
        if self.server.draining:
            return PlainTextResponse("draining\n", status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return PlainTextResponse("OK\n")

    def metrics(self, headers: Any) -> Response:
        if not self.server.authorized(headers):
            return _unauthorized()
        return Response(self.server.metrics_text(), media_type=CONTENT_TYPE)

    def not_a_websocket(self, path: str, headers: Any) -> Response:
        """A plain HTTP request on another path: the handshake's refusal, or 426 at an endpoint."""
        refusal = self.server.handshake_refusal(path, headers)
        if refusal is None:
            return PlainTextResponse(f"{path} is a websocket endpoint; connect with a websocket client\n",
                                     status_code=HTTPStatus.UPGRADE_REQUIRED)
        return _unauthorized() if refusal[0] == HTTPStatus.UNAUTHORIZED else PlainTextResponse(refusal[1], refusal[0])

    # -- websocket ----------------------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        """One websocket connection, from handshake to close."""
        await self.start()
        raw_path = websocket.scope.get("path", "/") or "/"
        query = websocket.scope.get("query_string", b"").decode("latin-1")
        if query:
            raw_path += "?" + query
        refusal = self.server.handshake_refusal(raw_path, websocket.headers)
        if refusal is not None:
            status, body = refusal
            response = _unauthorized() if status == HTTPStatus.UNAUTHORIZED else PlainTextResponse(body, status)
            try:
                await websocket.send_denial_response(response)
            except RuntimeError:  # the server has no denial-response extension: a plain 403
                await websocket.close(1008)
            return
        await websocket.accept()
        await self.server.run_session(AsgiSocket(websocket), raw_path)


def _unauthorized() -> Response:
    return PlainTextResponse("missing or wrong token\n", status_code=HTTPStatus.UNAUTHORIZED,
                             headers={"WWW-Authenticate": 'Bearer realm="headway"'})


def starlette_app(server: HeadwayServer):
    """A Starlette app serving ``server``'s endpoints; its lifespan starts and drains it."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route, WebSocketRoute

    asgi = HeadwayAsgi(server)

    @asynccontextmanager
    async def lifespan(app):
        await asgi.start()
        yield
        await asgi.drain()

    async def healthz(request: Request) -> Response:
        return asgi.healthz()

    async def metrics(request: Request) -> Response:
        return asgi.metrics(request.headers)

    async def other(request: Request) -> Response:
        return asgi.not_a_websocket(request.url.path, request.headers)

    app = Starlette(routes=[Route("/healthz", healthz), Route("/healthz/", healthz), Route("/metrics", metrics),
                            WebSocketRoute("/{path:path}", asgi.websocket), Route("/{path:path}", other)],
                    lifespan=lifespan)
    app.state.headway = asgi
    return app


def uvicorn_config(app, host: str, port: int, server: HeadwayServer):
    """uvicorn's settings equivalent to the websockets server's transport settings."""
    import uvicorn

    c = server.config
    return uvicorn.Config(app, host=host, port=port, ws="websockets-sansio", ws_max_size=c.max_size,
                          ws_ping_interval=c.ping_interval_s, ws_ping_timeout=c.ping_timeout_s,
                          ws_per_message_deflate=False, lifespan="on", log_level="warning",
                          timeout_graceful_shutdown=int(c.drain_timeout_s))


class CloseAbandonedWebsockets:
    """ASGI middleware for a proxy in front of replicas (Ray Serve's ingress: see
    :func:`stream.ray_serve.proxy_middlewares`). A websocket that the app behind it accepted
    and then left without a close frame -- the replica serving it died -- is closed with
    ``code`` (1012, service restart: reconnect) instead of dropped, which a client would see
    as 1006 with no reason. Closes the app or the client made pass through untouched."""

    def __init__(self, app: Any, code: int = CLOSE_SERVICE_RESTART, reason: str = "replica lost; reconnect"):
        self.app = app
        self.code = code
        self.reason = reason

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        accepted = ended = False

        async def tracked_send(message: dict) -> None:
            nonlocal accepted, ended
            accepted = accepted or message["type"] == "websocket.accept"
            ended = ended or message["type"] == "websocket.close"
            await send(message)

        async def tracked_receive() -> dict:
            nonlocal ended
            message = await receive()
            ended = ended or message["type"] == "websocket.disconnect"
            return message

        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            if accepted and not ended:
                try:
                    await send({"type": "websocket.close", "code": self.code, "reason": self.reason})
                except Exception:  # the client went meanwhile: nothing to tell
                    log.debug("could not close an abandoned websocket", exc_info=True)
