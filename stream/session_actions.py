"""What a sans-I/O session protocol asks its I/O pump to do (:mod:`stream.session_protocols`).

A protocol returns a list of actions; the pump (:mod:`stream.sessions`) carries them out in
order: :class:`Send` a frame, :class:`Submit` a request to the engine (its outcome comes
back to the protocol's ``answered``), :class:`CancelQueued` to take the session's queued
requests off the engine's queue (their outcomes never come back), :class:`PromoteQueued` to
move them to a higher lane, :class:`Close` the
connection, or :class:`Wake` it later (a paced session).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream import protocol
from stream.batcher import Lane
from stream.errors import CLOSE_INTERNAL, ProtocolError


@dataclass
class Send:
    frame: bytes | str
    code: str | None = None  # the reply's outcome for the metrics: "ok" or an error code
    arrival_ns: int | None = None  # of the request answered (latency metrics)
    deadline_ns: int | None = None
    s: int | None = None  # a chunk's execution horizon (metrics)
    prompt_end_ns: int | None = None  # a chat reply's first token: when its prompt ended (TTFT metric)


@dataclass
class Submit:
    key: int  # passed back with the outcome to ``answered``
    inputs: Any
    budget_s: float
    arrival_ns: int
    allow_degrade: bool = False
    target_s: float | None = None
    lane: Lane = Lane.ONESHOT  # a stepped session's prefill slices and decode steps name theirs


@dataclass
class CancelQueued:
    """Drop every request of this session that the engine has not started; a request already
    running still answers."""


@dataclass
class PromoteQueued:
    """Move this session's requests that the engine has not started up to ``lane``, keeping
    their order: the user now waits for work queued as background (a chat prompt that ended
    while its last slice waited on the prefill lane)."""

    lane: Lane


@dataclass
class Close:
    code: int
    reason: str


@dataclass
class Wake:
    """Call the protocol's ``woke(now_ns)`` at (or soon after) ``at_ns`` (monotonic clock), unless
    the session has ended: a protocol that paces its output (speech synthesis) waits this way."""

    at_ns: int


Action = Send | Submit | CancelQueued | PromoteQueued | Close | Wake


def report_and_close(error: ProtocolError) -> list[Action]:
    """Say why the session ends, as a JSON text frame (every client can read one), then close
    with the error's close code (1011 for a code that leaves sessions open)."""
    return [Send(protocol.encode_text(error.to_message()), error.code),
            Close(error.close_code or CLOSE_INTERNAL, error.message[:120])]
