"""A real Headway server on loopback, on its own event loop in a thread, for tests.

Running the server on its own loop keeps test clients -- async ones and openpi's blocking
one -- from sharing (and accidentally stalling) the server's loop, as in production.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np

from stream import registry
from stream.server import HeadwayServer, ServerConfig


def standin(ms: float = 0.0, alias: str | None = None, max_batch: int = 64) -> registry.LoadedModel:
    return registry.load("standin", registry.ModelOptions(standin_ms=ms, max_batch_size=max_batch), alias=alias)


TRANSPORTS = ("websockets", "asgi")


START_TIMEOUT_S = 60.0  # loading models on a busy 2-core CI machine can take tens of seconds


class ServerThread:
    """``with ServerThread([standin(5)], ServerConfig(...)) as s: s.url`` -- a running server.

    The port is chosen by the OS. Leaving the block drains the server (as SIGTERM does).
    ``transport="asgi"`` serves the same server through the ASGI adapter (stream/asgi.py) on
    uvicorn instead of the websockets server.
    """

    def __init__(self, models: list[registry.LoadedModel] | None = None, config: ServerConfig | None = None,
                 port: int = 0, transport: str = "websockets"):
        assert transport in TRANSPORTS, transport
        self.transport = transport
        self.models = models or [standin()]
        self.config = replace(config or ServerConfig(), port=port)
        self.server: HeadwayServer | None = None
        self._asgi = None
        self._uvicorn = None
        self._asgi_port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import uvloop

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.server = HeadwayServer(self.models, self.config)
            if self.transport == "asgi":
                await self._serve_asgi()
                return
            await self.server.start()
            self._ready.set()
            await self.server.wait_closed()

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _serve_asgi(self) -> None:
        import uvicorn

        from stream.asgi import starlette_app, uvicorn_config

        app = starlette_app(self.server)
        self._asgi = app.state.headway
        self._uvicorn = uvicorn.Server(uvicorn_config(app, self.config.host, self.config.port, self.server))
        task = asyncio.create_task(self._uvicorn.serve())
        while not self._uvicorn.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
            raise RuntimeError("uvicorn did not start")
        self._asgi_port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self._ready.set()
        await task

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        started = self._ready.wait(START_TIMEOUT_S)
        if self._error is not None:
            raise self._error
        if not started:  # never hand a test a server without a port: it would connect to port 80
            raise TimeoutError(f"the server did not start within {START_TIMEOUT_S:.0f} s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()

    def drain(self, timeout: float = 10) -> None:
        if self._thread.is_alive() and self.loop is not None and self.server is not None:
            if self.transport == "asgi":  # sessions close with 1001 first, then uvicorn stops
                asyncio.run_coroutine_threadsafe(self._asgi.drain(), self.loop).result(timeout)
                self._uvicorn.should_exit = True
            else:
                asyncio.run_coroutine_threadsafe(self.server.drain(), self.loop).result(timeout)
        self._thread.join(timeout)

    def call(self, function, timeout: float = 5):
        """Run ``function()`` on the server's loop (to read its state safely)."""
        async def wrapper():
            return function()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self._asgi_port if self.transport == "asgi" else self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics_text(self) -> str:
        import urllib.request

        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        request = urllib.request.Request(self.http + "/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` whose labels include ``labels`` (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def state_for(i: int) -> np.ndarray:
    """A distinct, reproducible state per index."""
    return np.random.default_rng(i).standard_normal(14).astype(np.float32)
