"""The wire protocol, sans I/O: frames in, validated messages out; messages in, frames out.

Nothing here touches a socket or the clock. The session feeds it the frames it received
and sends the frames it gets back.

Framing (DESIGN rule 5):

* **Binary frames** are msgpack maps, numpy arrays encoded as openpi encodes them
  (``wire`` holds that codec once; this module adds validation).
* **Text frames** are JSON objects carrying the same messages, arrays as nested lists.
* Every Headway message has a ``type``. The openpi-compatible endpoint ``/`` also accepts
  a bare observation map (what openpi's client sends) and treats it as ``"observation"``.
* Errors are ``{"type": "error", "code": <string>, "message": <string>}``. Fatal errors are
  followed by a close frame: :data:`CLOSE_BAD_INPUT` (1008), :data:`CLOSE_TOO_LARGE` (1009),
  :data:`CLOSE_OVERLOADED` (1013), :data:`CLOSE_INTERNAL` (1011); a draining server closes with
  :data:`CLOSE_GOING_AWAY` (1001). Non-fatal errors (``deadline_exceeded``, ``superseded``,
  ``queue_full``) leave the session open.

Validation (:class:`ObservationSpec`) checks every field -- presence, type, dtype, shape,
size, finiteness -- before anything reaches an engine queue, and fails with a
:class:`ProtocolError` whose message names the field and what was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from stream import wire

from stream.errors import (  # noqa: F401  (the codec's callers import the error table from here)
    CLOSE_BAD_INPUT,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_OVERLOADED,
    CLOSE_TOO_LARGE,
    ERROR_CLOSE_CODES,
    ProtocolError,
    error,
)


# ---------------------------------------------------------------------------------------
# Frames


def decode(frame: bytes | str) -> dict:
    """Decode one frame into a message map (arrays from binary frames are read-only views).

    Raises ``ProtocolError("bad_frame")`` for anything that is not one msgpack/JSON map.
    """
    if isinstance(frame, str):
        try:
            message = json.loads(frame)
        except ValueError as exc:
            raise ProtocolError("bad_frame", f"text frame is not JSON: {exc}") from None
    else:
        try:
            message = wire.unpackb(frame)
        except ValueError as exc:
            raise ProtocolError("bad_frame", str(exc)) from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_frame", f"a message is a map, got {type(message).__name__}")
    return message


def encode_binary(message: Mapping[str, Any]) -> bytes:
    """One binary (msgpack) frame for ``message``."""
    return wire.packb(message)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        raise TypeError("bytes do not travel in text frames; use a binary frame")
    return value


def encode_text(message: Mapping[str, Any]) -> str:
    """One text (JSON) frame for ``message``; arrays become nested lists."""
    return json.dumps(_jsonable(message), separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class ArrayField:
    """An array field. ``shape`` entries are exact sizes or None (any size up to ``max_size``).

    ``dtypes`` lists accepted numpy dtype names; the value is converted to ``cast``
    (C-contiguous) once accepted. JSON lists are accepted and converted the same way.
    """

    dtypes: tuple[str, ...]
    shape: tuple[int | None, ...]
    cast: str
    finite: bool = True
    max_size: int = 4096
    required: bool = True

    def describe(self) -> dict:
        return {"kind": "array", "dtypes": list(self.dtypes), "shape": list(self.shape),
                "required": self.required}

    def __post_init__(self) -> None:
        # dtype objects, not names: comparing them costs no string per request
        object.__setattr__(self, "_accepted", frozenset(np.dtype(d) for d in self.dtypes))
        object.__setattr__(self, "_cast", np.dtype(self.cast))

    def validate(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            if value.dtype not in self._accepted:
                raise ProtocolError("bad_dtype", f"{name}: dtype {value.dtype.name} not accepted "
                                                 f"(accepted: {', '.join(self.dtypes)})")
            array = value
        elif isinstance(value, list):
            try:
                array = np.asarray(value, dtype=self._cast)
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError("bad_dtype", f"{name}: list is not numeric "
                                                 f"(expected {self.cast})") from None
        else:
            raise ProtocolError("bad_type", f"{name}: expected an array, got {type(value).__name__}")
        shape = array.shape
        fits = len(shape) == len(self.shape)
        if fits:
            for got, want in zip(shape, self.shape):
                if (got != want) if want is not None else not 0 < got <= self.max_size:
                    fits = False
                    break
        if not fits:
            want = "x".join("N" if n is None else str(n) for n in self.shape)
            raise ProtocolError("bad_shape", f"{name}: shape {list(shape)} does not match [{want}]")
        if array.dtype != self._cast:
            array = array.astype(self._cast)
        if self.finite and array.dtype.kind == "f" and not _finite(array):
            raise ProtocolError("not_finite", f"{name}: contains NaN or Inf")
        return array


def _finite(array: np.ndarray) -> bool:
    # A robot state is a handful of floats: checking them in Python is a few times cheaper
    # than two numpy calls; large arrays take numpy's path.
    if array.ndim == 1 and array.size <= 64:
        return all(map(math.isfinite, array.tolist()))
    return bool(np.isfinite(array).all())


@dataclass(frozen=True)
class ImageField:
    """A uint8 RGB image of exactly ``height`` x ``width``, sent ``[H, W, 3]`` (openpi's LIBERO
    and DROID examples) or ``[3, H, W]`` (its ALOHA example); validated to ``[H, W, 3]``."""

    height: int
    width: int
    required: bool = True

    def describe(self) -> dict:
        return {"kind": "image", "dtypes": ["uint8"], "shape": [self.height, self.width, 3],
                "also": [3, self.height, self.width], "required": self.required}

    def validate(self, name: str, value: Any) -> np.ndarray:
        pixels = ArrayField(("uint8",), (None, None, None), cast="uint8", finite=False,
                            max_size=max(self.height, self.width, 3))
        try:
            array = pixels.validate(name, value)
        except ProtocolError as exc:
            if exc.code != "bad_shape":
                raise
            array = None
        if array is not None and array.shape == (self.height, self.width, 3):
            return array
        if array is not None and array.shape == (3, self.height, self.width):
            return np.ascontiguousarray(array.transpose(1, 2, 0))
        got = list(np.shape(value)) if isinstance(value, (np.ndarray, list)) else "?"
        raise ProtocolError("bad_shape", f"{name}: shape {got} does not match [{self.height}, {self.width}, 3] "
                                         f"or [3, {self.height}, {self.width}]")


@dataclass(frozen=True)
class ArrayMapField:
    """A map of named arrays (e.g. camera name -> image), at most ``max_items`` entries; with
    ``names``, exactly those entries."""

    item: ArrayField | ImageField
    max_items: int = 4
    required: bool = False
    names: tuple[str, ...] | None = None

    def describe(self) -> dict:
        described = {"kind": "map", "item": self.item.describe(), "max_items": self.max_items,
                     "required": self.required}
        if self.names is not None:
            described["names"] = list(self.names)
        return described

    def validate(self, name: str, value: Any) -> dict[str, np.ndarray]:
        if not isinstance(value, dict):
            raise ProtocolError("bad_type", f"{name}: expected a map of arrays, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise ProtocolError("bad_shape", f"{name}: {len(value)} entries, at most {self.max_items}")
        if self.names is not None and set(value) != set(self.names):
            raise ProtocolError("bad_shape", f"{name}: entries {sorted(map(str, value))}, expected exactly "
                                             f"{', '.join(self.names)}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= 64:
                raise ProtocolError("bad_type", f"{name}: keys are strings of 1 to 64 characters")
            out[key] = self.item.validate(f"{name}.{key}", item)
        return out


@dataclass(frozen=True)
class TextField:
    """A string field of at most ``max_length`` characters."""

    max_length: int = 1024
    required: bool = False

    def describe(self) -> dict:
        return {"kind": "text", "max_length": self.max_length, "required": self.required}

    def validate(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError("bad_type", f"{name}: expected a string, got {type(value).__name__}")
        if len(value) > self.max_length:
            raise ProtocolError("bad_shape", f"{name}: {len(value)} characters, at most {self.max_length}")
        return value


@dataclass(frozen=True)
class Renamed:
    """A model field that clients send under another key (``headway serve --obs-map``): the
    spec holds it under the client's key and validation hands it on as ``to``; ``to`` None
    accepts the key and drops it (a prompt for a policy that takes none)."""

    field: "ArrayField | ImageField | ArrayMapField | TextField | None"
    to: str | None

    @property
    def required(self) -> bool:
        return self.field is not None and self.field.required

    def describe(self) -> dict:
        if self.field is None:
            return {"kind": "ignored", "required": False}
        return {**self.field.describe(), "as": self.to}

    def validate(self, name: str, value: Any) -> Any:
        return None if self.field is None else self.field.validate(name, value)


Field = ArrayField | ImageField | ArrayMapField | TextField | Renamed


@dataclass(frozen=True)
class ObservationSpec:
    """What one observation of a model must look like.

    ``validate`` returns a new map holding only the model's fields, converted (arrays
    C-contiguous in their ``cast`` dtype). Unknown fields are refused, so a typo in a key
    fails loudly instead of being ignored.
    """

    fields: dict[str, Field]
    # Envelope keys a session reads itself; they are allowed next to the model's fields.
    envelope: frozenset[str] = field(default_factory=lambda: frozenset({"type", "id"}))

    def describe(self) -> dict:
        return {name: f.describe() for name, f in self.fields.items()}

    def validate(self, message: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in message:
            if name not in self.fields and name not in self.envelope:
                raise ProtocolError("unknown_field", f"unknown field {name!r} "
                                                     f"(expected: {', '.join(self.fields)})")
        for name, spec in self.fields.items():
            if name not in message:
                if spec.required:
                    raise ProtocolError("missing_field", f"missing field {name!r}")
                continue
            if isinstance(spec, Renamed):
                if spec.to is not None:
                    out[spec.to] = spec.validate(name, message[name])
                continue
            out[name] = spec.validate(name, message[name])
        return out

    def renamed(self, wire_names: Mapping[str, str | None]) -> "ObservationSpec":
        """This spec with fields sent under other keys: ``wire_names`` maps a client's key to
        the field it carries (``{"observation/state": "state"}``), or to None for a key that is
        accepted and dropped; fields not named keep their keys. Raises ``ValueError`` (naming
        the fields) for a field that does not exist or is named twice, and for a client key
        that another field or the envelope already uses."""
        targets = [name for name in wire_names.values() if name is not None]
        for name in targets:
            if name not in self.fields:
                raise ValueError(f"the model has no field {name!r} (its fields: {', '.join(self.fields)})")
        if len(set(targets)) != len(targets):
            raise ValueError(f"a field is mapped from two keys: {', '.join(targets)}")
        wire_of = {name: wire for wire, name in wire_names.items() if name is not None}
        kept = {name for name in self.fields if name not in wire_of}
        fields: dict[str, Field] = {}  # in the model's order, so that error messages list them so
        for name, f in self.fields.items():
            fields[wire_of.get(name, name)] = Renamed(f, name) if name in wire_of else f
        for wire, name in wire_names.items():
            if wire in kept or wire in self.envelope:
                raise ValueError(f"{wire!r} is already a key of the model's observations")
            if name is None:
                fields[wire] = Renamed(None, None)
        return ObservationSpec(fields, envelope=self.envelope)


def request_id(message: Mapping[str, Any]) -> int | str | None:
    """The optional client-chosen ``id`` that a reply echoes (an int or a short string)."""
    value = message.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
        isinstance(value, str) and len(value) > 64
    ) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
        raise ProtocolError("bad_type", "id: an integer or a string of at most 64 characters")
    return value


def message_type(message: Mapping[str, Any], default: str | None = None) -> str:
    """The message's ``type``; ``default`` where the endpoint allows it to be left out."""
    value = message.get("type", default)
    if value is None:
        raise ProtocolError("missing_field", "missing field 'type'")
    if not isinstance(value, str):
        raise ProtocolError("bad_type", "type: expected a string")
    return value


def finite_ms(ns: int) -> float:
    """Nanoseconds as milliseconds rounded to microseconds, for ``server_timing``."""
    ms = ns / 1e6
    return round(ms, 3) if math.isfinite(ms) else 0.0
