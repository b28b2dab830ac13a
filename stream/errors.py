"""The one error type of the service, and the code table every error is answered with.

Every error a client can see -- a malformed frame, a refused session, a request that
missed its deadline -- is a :class:`ProtocolError` whose ``code`` is a key of
:data:`ERROR_CLOSE_CODES`. The session answers it as ``{"type": "error", "code",
"message"}`` and then closes with the close code the table names (None: the session stays
open). The engine raises the same type, so no layer translates one error into another.
"""

from __future__ import annotations

from typing import Any

# Close codes (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_BAD_INPUT = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012  # the server behind a proxy is gone: reconnect
CLOSE_OVERLOADED = 1013

# Error codes. Each maps to the close code that follows it (None: the session stays open).
ERROR_CLOSE_CODES: dict[str, int | None] = {
    "bad_frame": CLOSE_BAD_INPUT,  # not msgpack / not JSON / not a map
    "unknown_type": CLOSE_BAD_INPUT,  # a ``type`` this endpoint does not speak
    "missing_field": CLOSE_BAD_INPUT,
    "unknown_field": CLOSE_BAD_INPUT,
    "bad_type": CLOSE_BAD_INPUT,  # a field of the wrong kind (string for an array, ...)
    "bad_dtype": CLOSE_BAD_INPUT,
    "bad_shape": CLOSE_BAD_INPUT,
    "not_finite": CLOSE_BAD_INPUT,  # NaN or Inf in a float field
    "text_not_accepted": CLOSE_BAD_INPUT,  # a text frame on a binary-only endpoint
    "unsupported": CLOSE_BAD_INPUT,  # a hello asks for what the model cannot do (future state without a rollout)
    "too_large": CLOSE_TOO_LARGE,  # enforced by the transport (max_size) before decoding
    "context_full": CLOSE_TOO_LARGE,  # a chat conversation would outgrow the model's context
    "buffer_full": CLOSE_TOO_LARGE,  # a speech stream sent more audio ahead than its buffer holds
    "at_capacity": CLOSE_OVERLOADED,  # no session or state slot free on this model
    "slow_consumer": CLOSE_BAD_INPUT,  # the client stopped reading its replies
    "internal": CLOSE_INTERNAL,  # the model raised; the traceback stays in the server log
    "shutting_down": CLOSE_GOING_AWAY,
    "deadline_exceeded": None,  # the request could not be answered within its budget
    "superseded": None,  # a newer observation of the same session replaced this one
    "queue_full": None,  # the model's queue is full; shed, try again
}


class ProtocolError(Exception):
    """An error answered to the client. ``code`` is one of :data:`ERROR_CLOSE_CODES`."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CLOSE_CODES:
            raise KeyError(f"undocumented error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int | None:
        return ERROR_CLOSE_CODES[self.code]

    def to_message(self, **extra: Any) -> dict:
        return error(self.code, self.message, **extra)


def error(code: str, message: str, **extra: Any) -> dict:
    """The error message for ``code``; ``extra`` fields (e.g. ``id``) ride along."""
    if code not in ERROR_CLOSE_CODES:
        raise KeyError(f"undocumented error code {code!r}")
    return {"type": "error", "code": code, "message": message, **extra}
