"""Where an engine's executor runs, and the typed messages it is reached by.

The engine's worker thread talks to its executor only through an :class:`ExecutorHost`,
with three messages and no closures: :class:`OpenSlot`, :class:`CloseSlot`,
:class:`RunBatch`. So the executor can live in the worker thread itself
(:class:`InProcessHost`, the default) or in another process (:class:`ProcessHost`, the
shape a Ray Serve actor takes), and the sessions cannot tell which.

An executor is the batched model call::

    class Executor(Protocol):
        max_batch_size: int
        def run(self, batch: RunBatch) -> Sequence[Any]: ...   # one output per item, in order
        # stepped models (state kept per slot, e.g. a KV cache) also have:
        slots: int
        def open_slot(self, slot: int) -> None: ...
        def close_slot(self, slot: int) -> None: ...

``run`` is called one batch at a time; if it raises, every item of the batch is answered
``internal`` and the engine keeps serving. A host built from an :class:`ExecutorSpec`
(a ``module:function`` and keyword arguments) can build the executor wherever it runs.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from stream import wire

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One request as the executor sees it."""

    inputs: Any  # validated observation (dict of numpy arrays) or step input
    degraded: bool = False  # run cheaper (fewer denoising steps) to make the deadline
    slot: int | None = None  # stepped streams: whose state slot this step advances
    arrival_ns: int = 0
    deadline_ns: int = 0


@dataclass
class OpenSlot:
    slot: int


@dataclass
class CloseSlot:
    slot: int


@dataclass
class RunBatch:
    lane: int  # stream.batcher.Lane
    items: list[WorkItem]
    # Per slot of a stepped model: does it advance in this batch (False: idle, masked out).
    active: list[bool] = field(default_factory=list)


HostMessage = OpenSlot | CloseSlot | RunBatch


class Executor(Protocol):
    max_batch_size: int

    def run(self, batch: RunBatch) -> Sequence[Any]: ...


@dataclass(frozen=True)
class ExecutorSpec:
    """How to build an executor anywhere: ``target`` is ``"module:callable"``."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Executor:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


class ExecutorHost(Protocol):
    """Runs an executor; ``call`` blocks the engine's worker thread until it answers."""

    def start(self) -> None: ...

    def call(self, message: HostMessage) -> Any: ...

    def stop(self) -> None: ...


def _apply(executor: Executor, message: HostMessage) -> Any:
    if isinstance(message, RunBatch):
        outputs = executor.run(message)
        if len(outputs) != len(message.items):
            raise RuntimeError(f"executor returned {len(outputs)} outputs for {len(message.items)} items")
        return outputs
    if isinstance(message, OpenSlot):
        return executor.open_slot(message.slot)  # type: ignore[attr-defined]
    if isinstance(message, CloseSlot):
        return executor.close_slot(message.slot)  # type: ignore[attr-defined]
    raise TypeError(f"not a host message: {message!r}")


class InProcessHost:
    """The executor runs in the engine's worker thread (the default). Given a spec, it is
    built by ``start``, i.e. on the worker thread, so loading never blocks the event loop."""

    def __init__(self, executor: Executor | ExecutorSpec):
        self.spec = executor if isinstance(executor, ExecutorSpec) else None
        self.executor = None if self.spec is not None else executor

    def start(self) -> None:
        if self.spec is not None:
            self.executor = self.spec.build()

    def call(self, message: HostMessage) -> Any:
        return _apply(self.executor, message)  # type: ignore[arg-type]

    def stop(self) -> None:
        pass


# -- out of process ---------------------------------------------------------------------
#
# The messages cross the pipe as msgpack maps with numpy arrays encoded as on the wire
# (stream/wire.py): no pickle, so the child could as well be written in another language.


def _encode(message: HostMessage | None) -> bytes:
    if message is None:
        return wire.packb({"type": "stop"})
    if isinstance(message, RunBatch):
        return wire.packb({"type": "run", "lane": int(message.lane), "active": message.active,
                           "items": [{"inputs": i.inputs, "degraded": i.degraded, "slot": i.slot,
                                      "arrival_ns": i.arrival_ns, "deadline_ns": i.deadline_ns}
                                     for i in message.items]})
    kind = "open_slot" if isinstance(message, OpenSlot) else "close_slot"
    return wire.packb({"type": kind, "slot": message.slot})


def _decode(frame: bytes) -> HostMessage | None:
    message = wire.unpackb(frame)
    kind = message["type"]
    if kind == "run":
        return RunBatch(message["lane"], [WorkItem(**item) for item in message["items"]], message["active"])
    if kind == "open_slot":
        return OpenSlot(message["slot"])
    if kind == "close_slot":
        return CloseSlot(message["slot"])
    return None


def _child_main(connection, target: str, kwargs: dict) -> None:  # pragma: no cover (runs in the child)
    try:
        executor = ExecutorSpec(target, kwargs).build()
        connection.send_bytes(wire.packb({"type": "ready", "max_batch_size": executor.max_batch_size,
                                          "slots": getattr(executor, "slots", 0)}))
    except Exception:
        connection.send_bytes(wire.packb({"type": "error", "message": traceback.format_exc()}))
        return
    while True:
        try:
            message = _decode(connection.recv_bytes())
        except EOFError:
            return
        if message is None:
            return
        try:
            value = _apply(executor, message)
            reply = {"type": "ok", "value": list(value) if isinstance(message, RunBatch) else value}
        except Exception:
            reply = {"type": "error", "message": traceback.format_exc()}
        connection.send_bytes(wire.packb(reply))


class RemoteExecutorError(RuntimeError):
    """The executor in the other process raised; the message is its traceback."""


class ProcessHost:
    """The executor runs in a child process built from ``spec``; one call at a time.

    ``start`` blocks until the child has built its executor (loading weights, warming up);
    the engine calls it from its worker thread, so the event loop never waits for it. A
    child that dies makes every later call fail (answered ``internal``).
    """

    def __init__(self, spec: ExecutorSpec, *, start_timeout_s: float = 300.0):
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self.max_batch_size: int | None = None
        self.slots: int | None = None
        self._connection = None
        self._process = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork: the parent has threads
        parent, child = context.Pipe()
        self._process = context.Process(target=_child_main, args=(child, self.spec.target, self.spec.kwargs),
                                        name=f"executor-{self.spec.target}", daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        if not parent.poll(self.start_timeout_s):
            raise RemoteExecutorError(f"executor {self.spec.target} did not start within {self.start_timeout_s} s")
        reply = wire.unpackb(parent.recv_bytes())
        if reply["type"] != "ready":
            raise RemoteExecutorError(reply.get("message", "executor failed to start"))
        self.max_batch_size, self.slots = reply["max_batch_size"], reply["slots"]

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def call(self, message: HostMessage) -> Any:
        if self._connection is None:
            raise RemoteExecutorError("the executor process is not running")
        try:
            self._connection.send_bytes(_encode(message))
            reply = wire.unpackb(self._connection.recv_bytes())
        except (EOFError, OSError) as exc:
            raise RemoteExecutorError(f"the executor process is gone ({exc!r})") from None
        if reply["type"] == "error":
            raise RemoteExecutorError(reply["message"])
        return reply["value"]

    def stop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.send_bytes(_encode(None))
            except OSError:
                pass
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None
