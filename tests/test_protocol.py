"""The wire codec (wire) and the validated protocol (stream/protocol.py)."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openpi_client import msgpack_numpy as openpi

from stream import wire
from stream import protocol
from stream.protocol import ArrayField, ArrayMapField, ObservationSpec, ProtocolError, TextField

SPEC = ObservationSpec({
    "state": ArrayField(("float32", "float64"), (14,), cast="float32"),
    "images": ArrayMapField(ArrayField(("uint8",), (None, None, 3), cast="uint8", finite=False, max_size=640)),
    "prompt": TextField(max_length=16),
})


def good_observation() -> dict:
    return {"state": np.arange(14, dtype=np.float32), "images": {"cam": np.zeros((4, 5, 3), np.uint8)}}


# -- wire codec ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.int16]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))
def test_arrays_round_trip_exactly(array):
    back = wire.unpackb(wire.packb({"x": array}))["x"]
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array, equal_nan=array.dtype.kind == "f")


def test_encoding_is_byte_identical_to_openpi():
    message = {"state": np.arange(3, dtype=np.float32), "n": np.int64(7), "text": "hi", "nested": {"a": [1, 2]}}
    assert wire.packb(message) == openpi.packb(message)


def test_openpi_encoded_frames_decode():
    message = {"actions": np.ones((50, 14), np.float32), "scalar": np.float32(2.5)}
    back = wire.unpackb(openpi.packb(message))
    assert np.array_equal(back["actions"], message["actions"]) and back["scalar"] == 2.5
    assert isinstance(back["scalar"], np.float32)


def test_numpy_scalars_keep_their_dtype():
    back = wire.unpackb(wire.packb({"k": np.int16(-3)}))["k"]
    assert isinstance(back, np.int16) and back == -3


@pytest.mark.parametrize("array", [np.array([1 + 2j]), np.array([None], dtype=object),
                                   np.zeros(2, dtype=[("a", "<i4")])])
def test_packing_refuses_complex_object_and_void(array):
    with pytest.raises(ValueError):
        wire.packb({"x": array})


@pytest.mark.parametrize("dtype", ["|O", "<c8", "|V4", "<U4", "nonsense", "<M8[s]"])
def test_unpacking_refuses_unsafe_or_unknown_dtypes(dtype):
    frame = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": dtype, b"shape": [1]}})
    with pytest.raises(ValueError):
        wire.unpackb(frame)


def test_unpacking_refuses_shape_that_does_not_match_the_bytes():
    frame = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 12, b"dtype": "<f4", b"shape": [4]}})
    with pytest.raises(ValueError, match="needs 16 bytes"):
        wire.unpackb(frame)


def test_decoded_arrays_are_read_only_views():
    back = wire.unpackb(wire.packb({"x": np.zeros(4, np.float32)}))["x"]
    assert not back.flags.writeable


# -- frames -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [b"\xc1\xc1garbage", b"", msgpack.packb([1, 2]), "not json", "[1, 2]"])
def test_decode_refuses_what_is_not_one_map(frame):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    assert info.value.code == "bad_frame" and info.value.close_code == protocol.CLOSE_BAD_INPUT


def test_text_frames_mirror_binary_frames():
    message = {"type": "actions", "actions": np.arange(6, dtype=np.float32).reshape(2, 3), "id": 4}
    from_text = protocol.decode(protocol.encode_text(message))
    from_binary = protocol.decode(protocol.encode_binary(message))
    assert from_text["type"] == from_binary["type"] == "actions" and from_text["id"] == from_binary["id"] == 4
    assert np.array_equal(np.asarray(from_text["actions"], np.float32), from_binary["actions"])


def test_json_observation_validates_like_binary_one():
    text = json.dumps({"state": list(range(14))})
    out = SPEC.validate(protocol.decode(text))
    assert out["state"].dtype == np.float32 and np.array_equal(out["state"], np.arange(14))


def test_error_messages_carry_type_code_and_message():
    assert protocol.error("deadline_exceeded", "late", id=3) == {
        "type": "error", "code": "deadline_exceeded", "message": "late", "id": 3}


def test_undocumented_error_codes_are_refused():
    with pytest.raises(KeyError):
        protocol.error("oops", "x")


@pytest.mark.parametrize("code, close", [("bad_dtype", 1008), ("too_large", 1009), ("at_capacity", 1013),
                                         ("internal", 1011), ("shutting_down", 1001), ("deadline_exceeded", None)])
def test_close_codes_follow_the_design(code, close):
    assert protocol.ERROR_CLOSE_CODES[code] == close


# -- validation ---------------------------------------------------------------------------


def test_valid_observation_is_converted_and_envelope_ignored():
    message = {**good_observation(), "type": "observation", "id": 1}
    message["state"] = message["state"].astype(np.float64)
    out = SPEC.validate(message)
    assert set(out) == {"state", "images"} and out["state"].dtype == np.float32


@pytest.mark.parametrize("change, code", [
    (lambda m: m.pop("state"), "missing_field"),
    (lambda m: m.update(stat=np.zeros(14)), "unknown_field"),
    (lambda m: m.update(state=np.zeros(14, np.int32)), "bad_dtype"),
    (lambda m: m.update(state=np.zeros(13, np.float32)), "bad_shape"),
    (lambda m: m.update(state=np.zeros((1, 14), np.float32)), "bad_shape"),
    (lambda m: m.update(state=np.full(14, np.nan, np.float32)), "not_finite"),
    (lambda m: m.update(state=np.full(14, -np.inf, np.float32)), "not_finite"),
    (lambda m: m.update(state="fourteen"), "bad_type"),
    (lambda m: m.update(state=["a"] * 14), "bad_dtype"),
    (lambda m: m.update(images={"cam": np.zeros((4, 5, 3), np.float32)}), "bad_dtype"),
    (lambda m: m.update(images={"cam": np.zeros((641, 5, 3), np.uint8)}), "bad_shape"),
    (lambda m: m.update(images={f"c{i}": np.zeros((2, 2, 3), np.uint8) for i in range(5)}), "bad_shape"),
    (lambda m: m.update(images=np.zeros((2, 2, 3), np.uint8)), "bad_type"),
    (lambda m: m.update(prompt="x" * 17), "bad_shape"),
])
def test_invalid_fields_are_refused_with_their_code(change, code):
    message = good_observation()
    change(message)
    with pytest.raises(ProtocolError) as info:
        SPEC.validate(message)
    assert info.value.code == code and info.value.close_code == protocol.CLOSE_BAD_INPUT


@pytest.mark.parametrize("value", [True, 1.5, "x" * 65, [1], 2**70])
def test_bad_request_ids_are_refused(value):
    with pytest.raises(ProtocolError):
        protocol.request_id({"id": value})


def test_message_type_defaults_only_where_allowed():
    assert protocol.message_type({}, default="observation") == "observation"
    with pytest.raises(ProtocolError):
        protocol.message_type({})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_either_decode_to_a_map_or_raise_protocol_error(frame):
    try:
        message = protocol.decode(frame)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"
    else:
        assert isinstance(message, dict)
        try:
            SPEC.validate(message)
        except ProtocolError:
            pass


# -- images of a declared size, camera maps, renamed keys (--obs-map) ---------------------

IMAGE = protocol.ImageField(4, 5)


def test_an_image_sent_channels_first_is_handed_on_channels_last():
    chw = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    hwc = IMAGE.validate("cam", chw)
    assert hwc.shape == (4, 5, 3) and hwc.flags.c_contiguous
    assert np.array_equal(hwc, chw.transpose(1, 2, 0))


def test_an_image_sent_channels_last_is_handed_on_unchanged():
    hwc = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert np.array_equal(IMAGE.validate("cam", hwc), hwc)


@pytest.mark.parametrize("value,code", [(np.zeros((5, 4, 3), np.uint8), "bad_shape"),
                                        (np.zeros((4, 5), np.uint8), "bad_shape"),
                                        (np.zeros((4, 5, 3), np.float32), "bad_dtype"),
                                        ("pixels", "bad_type")])
def test_an_image_of_another_size_or_kind_is_refused(value, code):
    with pytest.raises(ProtocolError) as refused:
        IMAGE.validate("cam", value)
    assert refused.value.code == code and refused.value.message.startswith("cam:")


def test_a_camera_map_with_names_wants_exactly_those_cameras():
    cameras = ArrayMapField(IMAGE, max_items=2, required=True, names=("high", "wrist"))
    image = np.zeros((4, 5, 3), np.uint8)
    assert sorted(cameras.validate("images", {"high": image, "wrist": image})) == ["high", "wrist"]
    with pytest.raises(ProtocolError, match="expected exactly high, wrist"):
        cameras.validate("images", {"high": image, "low": image})


RENAMED = SPEC.renamed({"observation/state": "state", "observation/prompt": "prompt", "episode": None})


def test_a_renamed_key_is_validated_as_its_field_and_handed_on_under_the_fields_name():
    out = RENAMED.validate({"observation/state": np.arange(14, dtype=np.float64), "observation/prompt": "go",
                            "episode": 3})
    assert sorted(out) == ["prompt", "state"] and out["state"].dtype == np.float32 and out["prompt"] == "go"


def test_the_fields_own_key_is_refused_once_it_is_renamed_naming_the_keys_clients_send():
    with pytest.raises(ProtocolError) as refused:
        RENAMED.validate({"state": np.arange(14, dtype=np.float32)})
    assert refused.value.code == "unknown_field"
    assert "observation/state, images, observation/prompt, episode" in refused.value.message


def test_a_renamed_required_field_is_still_required_under_its_new_key():
    with pytest.raises(ProtocolError, match="missing field 'observation/state'"):
        RENAMED.validate({"observation/prompt": "go"})


@pytest.mark.parametrize("wire_names,complaint", [({"x": "nope"}, "no field 'nope'"),
                                                  ({"a": "state", "b": "state"}, "two keys"),
                                                  ({"images": "state"}, "already a key"),
                                                  ({"id": None}, "already a key")])
def test_a_rename_that_cannot_hold_is_refused(wire_names, complaint):
    with pytest.raises(ValueError, match=complaint):
        SPEC.renamed(wire_names)
