"""Headway's binary wire format: msgpack with numpy arrays, exactly as openpi encodes them.

This is the whole codec a robot needs; it depends on ``msgpack`` and ``numpy`` only. It is the
contract between the two sides: the server (``stream``) and the clients (``clients``) both
import it, and it is the one module of ``stream`` that clients import.

* A numpy array travels as a map
  ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [50, 14]}``
  (``dtype`` is numpy's ``dtype.str``: byte order, kind, item size).
* A numpy scalar travels as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<f8"}``.
* Everything else is plain msgpack: maps with ``str`` keys, lists, ``str``, ``bytes``, numbers,
  booleans, ``None``.
* Object, void and complex dtypes are refused on both sides, so pickle is never needed
  and never used.

Decoding is zero-copy: an array's memory is the received frame (so it is read-only).
A malformed array map (unknown dtype, a shape that does not match the byte count)
raises ``ValueError``; so does a frame that is not msgpack.

This matches ``openpi_client.msgpack_numpy``, so openpi's ``WebsocketClientPolicy`` talks
to Headway unmodified and this module talks to openpi's server.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# Kinds numpy may carry over the wire: bool, signed, unsigned, float. Object (O), void (V),
# complex (c), strings (U, S) and datetimes (M, m) are refused.
ALLOWED_KINDS = frozenset("biuf")


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise ValueError(f"unsupported dtype {obj.dtype}: only bool, int, uint and float arrays travel")
        if isinstance(obj, np.ndarray):
            return {
                b"__ndarray__": True,
                b"data": obj.tobytes(),  # C order, whatever the array's layout
                b"dtype": obj.dtype.str,
                b"shape": obj.shape,
            }
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _dtype(text: Any) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise ValueError(f"bad dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise ValueError(f"bad dtype {text!r}") from exc
    if dtype.kind not in ALLOWED_KINDS:
        raise ValueError(f"unsupported dtype {text!r}: only bool, int, uint and float arrays travel")
    return dtype


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        dtype = _dtype(obj.get(b"dtype"))
        if not isinstance(data, bytes):
            raise ValueError("array data must be bytes")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"bad array shape {shape!r}")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(data):
            raise ValueError(f"array of shape {list(shape)} and dtype {dtype.str} needs "
                             f"{count * dtype.itemsize} bytes, got {len(data)}")
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"bad numpy scalar: {exc}") from exc
    return obj


def packb(message: Any) -> bytes:
    """Encode ``message`` (maps, lists, numbers, strings, numpy arrays and scalars) as one frame."""
    return msgpack.packb(message, default=_pack_default)


def unpackb(frame: bytes) -> Any:
    """Decode one binary frame; arrays come back as read-only views of ``frame``.

    Raises ``ValueError`` for anything that is not a well-formed message.
    """
    try:
        return msgpack.unpackb(frame, object_hook=_unpack_hook)
    except ValueError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise ValueError(f"not a msgpack message: {exc}") from exc
