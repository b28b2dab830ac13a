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


class ServerThread:
    """``with ServerThread([standin(5)], ServerConfig(...)) as s: s.url`` -- a running server.

    The port is chosen by the OS. Leaving the block drains the server (as SIGTERM does).
    """

    def __init__(self, models: list[registry.LoadedModel] | None = None, config: ServerConfig | None = None,
                 port: int = 0):
        self.models = models or [standin()]
        self.config = replace(config or ServerConfig(), port=port)
        self.server: HeadwayServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import uvloop

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.server = HeadwayServer(self.models, self.config)
            await self.server.start()
            self._ready.set()
            await self.server.wait_closed()

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()

    def drain(self, timeout: float = 10) -> None:
        if self._thread.is_alive() and self.loop is not None and self.server is not None:
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
        return self.server.port

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
