"""A ``headway serve`` in a separate process, for clients that need a server of their own
(the demo, the benchmarks, the tests). It starts ``python -m stream.cli serve``: a process,
not an import, so the client side stays apart from the server's code."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """``headway serve <args> --port P`` on loopback; ``url(path)`` once ``healthy``.

    Use as a context manager: the server is drained (SIGTERM) on exit, killed if it hangs.
    Raises ``RuntimeError`` if it exits or does not answer ``/healthz`` within ``timeout_s``,
    and ``OSError(EADDRINUSE)`` at once if something already listens on ``port`` (whose
    ``/healthz`` would otherwise pass for the new server's).
    """

    def __init__(self, serve_args: list[str], port: int | None = None, timeout_s: float = 60.0,
                 program: list[str] | None = None):
        """``program``: another server to run instead of ``headway serve`` (it gets ``--port P``
        and must answer ``/healthz``), e.g. openpi's server for side-by-side measurements."""
        self.port = port or free_port()
        head = program or [sys.executable, "-m", "stream.cli", "serve", "--log-level", "WARNING"]
        self.command = [*head, "--port", str(self.port), *serve_args]
        self.timeout_s = timeout_s
        self.process: subprocess.Popen | None = None

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> "ServerProcess":
        if _listening(self.port):
            raise OSError(errno.EADDRINUSE, f"port {self.port} on 127.0.0.1 is already in use (another "
                                            "'headway serve' or 'make demo' still running?); stop it with "
                                            f"Ctrl-C, or use another port: --port {self.port + 1}")
        self.process = subprocess.Popen(self.command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {' '.join(self.command)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up within {self.timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
