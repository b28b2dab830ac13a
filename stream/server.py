"""The websocket server: transport settings, HTTP endpoints, auth, routing, drain.

One :class:`HeadwayServer` serves one or more loaded models, each behind its own
:class:`~stream.engine.Engine`. The event loop only moves frames; model code runs on the
engines' worker threads (DESIGN rule 1).

HTTP, answered at the handshake (``process_request``), before any websocket exists:

* ``GET /healthz`` -> 200 ``OK`` (503 while draining). Never needs a token.
* ``GET /metrics`` -> 200, Prometheus text format (needs the token when one is set).
* ``GET /ui/`` -> the demo web app (static files, :mod:`stream.static_files`; ``/ui/info.json``:
  this server's endpoints and models, for the page to find what it can use).
* a path that is no endpoint -> 404 naming the endpoints this server has (and the closest
  one); a trailing slash is ignored (``/v1/policy/`` is ``/v1/policy``); a wrong or missing token -> 401; a browser
  ``Origin`` not on the allow-list -> 403 (clients that send no ``Origin`` -- robots,
  scripts -- are not browsers and pass); bad query parameters -> 400.

Websocket endpoints (DESIGN.md, Endpoints): ``/`` is the openpi-compatible policy protocol
(:class:`stream.session_protocols.OpenpiProtocol`); ``/v1/policy`` is real-time chunking for robot
control loops (:class:`stream.session_protocols.RealtimePolicyProtocol`, docs/policy-protocol.md);
``/v1/chat`` is partial-prompt LLM streaming (:class:`stream.chat_session.ChatProtocol`,
docs/chat-protocol.md). A server has the endpoints its models fit (policies: the first two;
chat models: the last); one :class:`stream.sessions.SessionPump` per connection moves the frames.
Other paths arrive with the issues that build them.

Transport: compression off; explicit ``max_size`` (a larger frame closes with 1009),
``max_queue``, ``write_limit``; keepalive pings. A session whose reply has waited to be
written for ``send_timeout_s`` (the client stopped reading) is closed with 1008.

Drain (:meth:`HeadwayServer.drain`, on SIGTERM/SIGINT under ``headway serve``): stop
listening (handshakes in progress get 503), let every session send the replies it owes,
close each with 1001, then stop the engines.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from stream.engine import Engine
from stream.hosts import ExecutorHost, InProcessHost, ProcessHost
from stream.metrics import CONTENT_TYPE, ServerMetrics
from stream.registry import LoadedModel
from stream.session_protocols import ROUTES
from stream.sessions import ServedModel, SessionPump
from stream.static_files import StaticFiles, default_web_dir

log = logging.getLogger(__name__)


def canonical_path(path: str) -> str:
    """``path`` without its query and trailing slashes: ``/v1/policy/?x=1`` -> ``/v1/policy``."""
    return path.partition("?")[0].rstrip("/") or "/"


def not_found_message(path: str, routes: Sequence[str] = tuple(ROUTES)) -> str:
    """The 404 body: what is not here, the closest endpoint, and every endpoint there is
    (``routes``: the websocket endpoints of this server)."""
    if path in ROUTES:  # an endpoint of Headway that none of this server's models serves
        need = ("a chat model (headway serve --llm PATH)" if path == "/v1/chat"
                else "a speech recogniser (headway serve --asr PATH)" if path in ("/v1/asr", "/api/asr-streaming")
                else "a policy (headway serve --model NAME)")
        first = f"no endpoint at {path}: it needs {need}, and this server serves none"
    else:
        close = difflib.get_close_matches(path, [*routes, *HTTP_ROUTES], n=1, cutoff=0.6)
        first = f"no endpoint at {path}" + (f"; did you mean {close[0]}?" if close else "")
    return f"{first}\nwebsocket endpoints: {', '.join(routes)}; HTTP GET: {', '.join([*HTTP_ROUTES, '/ui/'])}\n"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (tests)
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed; "*" allows every origin
    budget_s: float = 0.1  # default per-request budget (deadline = arrival + budget)
    max_budget_s: float = 10.0
    capacity: int = 256  # sessions per model; past it new sessions are closed with 1013
    max_queue: int | None = None  # queued requests per model (default: capacity)
    batch_window_s: float = 0.0
    margin_s: float = 0.001
    max_size: int = 8 * 2**20  # largest frame accepted (bytes)
    max_queue_frames: int = 4  # received frames buffered per connection before TCP pushes back
    write_limit: int = 2**16  # send buffer high-water mark (bytes)
    # Kernel send buffer per connection (SO_SNDBUF; None: the kernel's autotuning, which
    # grows to megabytes). Bounded so a client that stops reading is noticed within
    # ``send_timeout_s`` of a few hundred KiB backing up, not of megabytes.
    socket_send_buffer: int | None = 2**18
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    open_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    send_timeout_s: float = 5.0
    max_pending: int = 8  # requests per session awaiting their reply before reading pauses
    drain_timeout_s: float = 30.0
    # Where each model's executor runs: "thread" (the engine's worker thread) or "process"
    # (a child process per model, reached by typed messages; see stream/hosts.py).
    executor_host: str = "thread"
    # The folder served at /ui/ (None: the web app shipped in clients/web; "": no /ui/).
    ui_dir: str | None = None


class HeadwayServer:
    """Serves ``models`` (the first is the default at ``/``) with ``config``.

    ``await start()`` binds and starts the engines; ``await drain()`` shuts down
    gracefully; ``await wait_closed()`` returns after a drain has finished.

    The transport-neutral part -- :meth:`start_engines`, :meth:`handshake_refusal`,
    :meth:`run_session`, :meth:`metrics_text` -- is what another transport (the ASGI adapter,
    :mod:`stream.asgi`) builds on. ``host_for(model)`` chooses each model's executor host
    (default: ``config.executor_host``), e.g. a Ray Serve deployment (:mod:`stream.ray_deploy`).
    """

    def __init__(self, models: Sequence[LoadedModel], config: ServerConfig | None = None,
                 metrics: ServerMetrics | None = None,
                 host_for: Callable[[LoadedModel], ExecutorHost] | None = None):
        if not models:
            raise ValueError("serve at least one model")
        self.config = config or ServerConfig()
        self.metrics = metrics or ServerMetrics()
        self.served: dict[str, ServedModel] = {}
        if self.config.executor_host not in ("thread", "process"):
            raise ValueError(f"executor_host is 'thread' or 'process', not {self.config.executor_host!r}")
        for model in models:
            if model.name in self.served:
                raise ValueError(f"model {model.name!r} loaded twice; give one an alias")
            host_type = ProcessHost if self.config.executor_host == "process" else InProcessHost
            host = host_for(model) if host_for is not None else host_type(model.executor_spec)
            engine = Engine(model.name, host, max_batch_size=model.max_batch_size,
                            slots=model.slots, capacity=self.config.capacity, max_queue=self.config.max_queue,
                            batch_window_s=self.config.batch_window_s, margin_s=self.config.margin_s,
                            latency_prior_s=model.latency_prior_s, cost_of=model.cost_of,
                            metrics=self.metrics.for_engine(model.name))
            self.served[model.name] = ServedModel(model, engine)
        self.default_model = models[0].name
        # The endpoints this server has: a route is served when one of its models fits it.
        self.routes = {path: protocol for path, protocol in ROUTES.items()
                       if any(protocol.serves(m) for m in models)}
        self.sessions: set[SessionPump] = set()
        self.draining = False
        self.port = self.config.port
        self._ws_server: Server | None = None
        self._watchdog: asyncio.Task | None = None
        self._closed = asyncio.Event()
        ui_dir = default_web_dir() if self.config.ui_dir is None else (self.config.ui_dir or None)
        self.ui = StaticFiles(ui_dir) if ui_dir is not None else None

    # -- lifecycle ----------------------------------------------------------------------

    async def start_engines(self) -> None:
        """Start every engine on the running loop; return once each model is loaded and warm."""
        loop = asyncio.get_running_loop()
        for served in self.served.values():
            served.engine.start(loop)
        for served in self.served.values():  # loaded and warm before the first client
            await served.engine.ready()

    async def start(self) -> None:
        await self.start_engines()
        c = self.config
        self._ws_server = await serve(
            self._handle, c.host, c.port,
            compression=None,
            origins=None,  # checked in _process_request (_origin_allowed): the page at /ui/ is let in
            process_request=self._process_request,
            max_size=c.max_size,
            max_queue=c.max_queue_frames,
            write_limit=c.write_limit,
            ping_interval=c.ping_interval_s,
            ping_timeout=c.ping_timeout_s,
            open_timeout=c.open_timeout_s,
            close_timeout=c.close_timeout_s,
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.create_task(self._watch_slow_consumers())
        log.info("headway serving %s on ws://%s:%d", ", ".join(self.served), c.host, self.port)

    async def drain(self) -> None:
        """Refuse new handshakes, finish the work in flight, close sessions with 1001."""
        if self.draining:
            await self._closed.wait()
            return
        self.draining = True
        log.info("draining: %d sessions open", len(self.sessions))
        assert self._ws_server is not None
        self._ws_server.close(close_connections=False)
        for session in list(self.sessions):
            session.drain()
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), self.config.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out after %.0f s; closing the remaining connections",
                        self.config.drain_timeout_s)
            for connection in list(self._ws_server.connections):
                connection.transport.abort()
            await self._ws_server.wait_closed()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for served in self.served.values():
            await served.engine.stop()
        self._closed.set()
        log.info("drained")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- HTTP side of the handshake -------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return self.authorized(request.headers, request.path)

    def authorized(self, headers: Any, raw_path: str = "") -> bool:
        """Whether ``headers`` (any case-insensitive mapping), or the query of ``raw_path``, carry
        the token, if one is set."""
        token = self.config.token
        if not token:
            return True
        # moshi-server's ways (its clients send them): a kyutai-api-key header, or ?auth_id=
        kyutai = headers.get("kyutai-api-key") or parse_qs(raw_path.partition("?")[2]).get("auth_id", [""])[-1]
        if kyutai:
            return hmac.compare_digest(kyutai.strip().encode(), token.encode())
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("bearer", "api-key"):
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    def _session_options(self, raw_path: str) -> tuple[str, ServedModel, float]:
        """(route, served model, budget) from the request path; ValueError for bad values.

        Without ``?model=``, a route gets the first model it serves (the first policy at ``/``
        and ``/v1/policy``, the first chat model at ``/v1/chat``)."""
        path, query = canonical_path(raw_path), raw_path.partition("?")[2]
        params = parse_qs(query, max_num_fields=8)
        route = self.routes[path]
        default = next(name for name, served in self.served.items() if route.serves(served.model))
        name = params.get("model", [default])[-1]
        served = self.served.get(name)
        if served is None:
            raise ValueError(f"unknown model {name!r}; this server serves {', '.join(self.served)} "
                             f"(another model needs a server started with --model {name})")
        if not route.serves(served.model):
            fitting = [n for n, m in self.served.items() if route.serves(m.model)]
            raise ValueError(f"model {name!r} is not served at {path}; models served there: {', '.join(fitting)}")
        budget_s = self.config.budget_s
        if "budget_ms" in params:
            try:
                budget_s = float(params["budget_ms"][-1]) / 1000.0
            except ValueError:
                raise ValueError("budget_ms must be a number") from None
            if not 0.0 < budget_s <= self.config.max_budget_s:
                raise ValueError(f"budget_ms must be in (0, {self.config.max_budget_s * 1000:.0f}]")
        return path, served, budget_s

    def handshake_refusal(self, raw_path: str, headers: Any) -> tuple[HTTPStatus, str] | None:
        """Why a websocket handshake for ``raw_path`` is refused (status, body), or None to accept."""
        path = canonical_path(raw_path)
        if path not in self.routes:
            return HTTPStatus.NOT_FOUND, not_found_message(raw_path.partition("?")[0], list(self.routes))
        if not self.authorized(headers, raw_path):
            return HTTPStatus.UNAUTHORIZED, "missing or wrong token\n"
        if not self._origin_allowed(headers):
            return HTTPStatus.FORBIDDEN, "origin not allowed (headway serve --allowed-origin)\n"
        if self.draining:
            return HTTPStatus.SERVICE_UNAVAILABLE, "server is shutting down\n"
        try:
            self._session_options(raw_path)
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, f"{exc}\n"
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = canonical_path(request.path)
        if path in HTTP_ROUTES:
            return HTTP_ROUTES[path](self, connection, request)
        if (path == "/ui" or path.startswith("/ui/")) and self.ui is not None:
            return self._ui_file(connection, request)
        refusal = self.handshake_refusal(request.path, request.headers)
        if refusal is None:
            return None
        if refusal[0] == HTTPStatus.UNAUTHORIZED:
            return self._unauthorized(connection)
        return connection.respond(*refusal)

    def _healthz(self, connection: ServerConnection, request: Request) -> Response:
        if self.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        return connection.respond(HTTPStatus.OK, "OK\n")

    def _metrics(self, connection: ServerConnection, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(connection)
        response = connection.respond(HTTPStatus.OK, self.metrics_text())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    def metrics_text(self) -> str:
        """The Prometheus text of this server (queue depths read now)."""
        for served in self.served.values():
            self.metrics.queue_depth.labels(served.model.name).set(served.engine.queue_depth)
        return self.metrics.render().decode()

    def _origin_allowed(self, headers: Any) -> bool:
        """No ``Origin`` (not a browser), an allowed one (``--allowed-origin``, ``*`` any), or the
        page this server itself serves at ``/ui/``: an origin equal to ``http://`` + the request's
        ``Host``, where that host is an IP address or ``localhost``. (A host *name* could be an
        attacker's domain rebound to this address; such a page needs ``--allowed-origin``.)"""
        origin = headers.get("Origin")
        allowed = self.config.allowed_origins
        if origin is None or "*" in allowed or origin in allowed:
            return True
        host = headers.get("Host", "")
        if origin != f"http://{host}":
            return False
        hostname = urlsplit(origin).hostname or ""
        if hostname == "localhost":
            return True
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            return False
        return True

    def info(self) -> dict:
        """What ``/ui/info.json`` says: the websocket endpoints and, per model, the endpoints it
        serves and its task (the page picks the table policy by it); a chat model that takes the
        table's map as its ``hello`` context says ``table_context``."""
        models = [{"name": name, "task": served.model.metadata.get("task"),
                   "endpoints": [path for path, route in self.routes.items() if route.serves(served.model)]}
                  for name, served in self.served.items()]
        for entry, served in zip(models, self.served.values()):
            if getattr(served.model.chat, "context_text", None) is not None:
                entry["table_context"] = True  # a chat model that reads the table's map as its context
        return {"endpoints": list(self.routes), "models": models}

    def _ui_file(self, connection: ServerConnection, request: Request) -> Response:
        raw = request.path.partition("?")[0]
        if raw.rstrip("/") == "/ui" and not raw.endswith("/"):  # relative links need the slash
            response = connection.respond(HTTPStatus.MOVED_PERMANENTLY, "see /ui/\n")
            response.headers["Location"] = "/ui/"
            return response
        name = raw[len("/ui/"):] or "index.html"
        if name == "info.json":
            found = (json.dumps(self.info()).encode(), "application/json")
        else:
            assert self.ui is not None
            found = self.ui.get(name)
        if found is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no file {name!r} in the web app\n")
        body, content_type = found
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache"), ("Connection", "close")])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    @staticmethod
    def _unauthorized(connection: ServerConnection) -> Response:
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="headway"'
        return response

    # -- websocket side -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        if self.config.socket_send_buffer and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer)
        await self.run_session(ws, ws.request.path)

    async def run_session(self, ws: Any, raw_path: str) -> None:
        """Serve one accepted connection at ``raw_path`` until it ends. ``ws`` is the
        transport's socket: ``recv()``, ``send(frame)``, ``close(code, reason)``, raising
        websockets' ``ConnectionClosed`` once closed (the ASGI adapter translates)."""
        route, served, budget_s = self._session_options(raw_path)
        protocol = self.routes[route](served.model, budget_s=budget_s, max_pending=self.config.max_pending)
        session = SessionPump(ws, protocol, served, self.metrics)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:
            log.exception("session on %s failed", route)
            await ws.close(1011, "internal error")
        finally:
            self.sessions.discard(session)

    async def _watch_slow_consumers(self) -> None:
        limit_ns = int(self.config.send_timeout_s * 1e9)
        period = min(0.25, self.config.send_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic_ns()
            for session in list(self.sessions):
                started = session.send_started_ns
                if started and now - started > limit_ns:
                    session.abort_slow_consumer(self.config.close_timeout_s)


HTTP_ROUTES = {"/healthz": HeadwayServer._healthz, "/metrics": HeadwayServer._metrics}
