"""/v1/asr and /api/asr-streaming through a real server on loopback, with a tiny untrained
recogniser: Kyutai's client flow, slots and 1013, a stream that ends without flush, a client
faster than real time, a client past its buffer, the token, ``headway asr``'s client."""

from __future__ import annotations

import argparse
import asyncio
import json

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.asr import AsrClient, transcribe
from models.audio_resample import resample
from server_harness import ServerThread, standin
from stream.server import ServerConfig
from kyutai_client import SAMPLE_RATE, kyutai_transcribe
from tiny_asr import asr_model, noise, offline_words, save_tiny_asr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    directory = tmp_path_factory.mktemp("asr")
    return directory, save_tiny_asr(directory)


@pytest.fixture(scope="module")
def server(tiny):
    with ServerThread([standin(0), asr_model(tiny[0], slots=3, buffer_s=2.0)], ServerConfig(token="s3cret")) as running:
        yield running


def url(server, route="/v1/asr") -> str:
    return f"ws://127.0.0.1:{server.port}{route}"


def clamp(words, seconds):
    return [(t, min(s, round(seconds, 3)), min(e, round(seconds, 3))) for t, s, e in words]


async def test_kyutais_client_gets_the_transcript_from_asr_streaming(server, tiny):
    _, model = tiny
    audio = noise(2.0, 21, SAMPLE_RATE)
    transcript = await asyncio.wait_for(kyutai_transcribe(url(server, "/api/asr-streaming"), "s3cret", audio, rtf=50.0), 60)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    sent = np.concatenate([silence, audio.astype(np.float32)] + [silence] * 40)  # all the client sends
    expected = offline_words(model, resample(sent, SAMPLE_RATE, 16000))
    assert len(transcript) >= 3
    # the words up to the echoed marker: the stream's words in order, each one's start and end ...
    assert [(w["text"], w["timestamp"][0], w["timestamp"][1]) for w in transcript[:-1]] == expected[:len(transcript) - 1]
    assert transcript[-1]["text"] == expected[len(transcript) - 1][0]
    # ... and every word that starts before the marker's audio ends (1 s + the file + 5 s)
    assert len(transcript) >= len([w for w in expected if w[1] < 1.0 + 2.0 + 5.0])


async def test_a_wrong_kyutai_api_key_is_refused_at_the_handshake(server):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url(server, "/api/asr-streaming"), additional_headers={"kyutai-api-key": "nope"}):
            pass
    assert refused.value.response.status_code == 401
    async with connect(url(server, "/api/asr-streaming") + "?auth_id=s3cret") as ws:  # moshi-server's other way
        assert msgpack.unpackb(await ws.recv()) == {"type": "Ready"}


async def test_more_streams_than_slots_are_refused_with_1013_on_both_routes(server):
    headers = {"Authorization": "Bearer s3cret"}
    holders = [await connect(url(server), additional_headers=headers) for _ in range(3)]
    try:
        async with connect(url(server), additional_headers=headers) as extra:
            error = json.loads(await extra.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
        assert error["code"] == "at_capacity" and closed.value.rcvd.code == 1013
        async with connect(url(server, "/api/asr-streaming"), additional_headers=headers) as extra:
            error = msgpack.unpackb(await extra.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
        assert error["type"] == "Error" and "no free channels" in error["message"] and closed.value.rcvd.code == 1013
    finally:
        for ws in holders:
            await ws.close()


async def test_a_stream_that_ends_without_flush_frees_its_slot_for_a_fresh_stream(tiny):
    directory, model = tiny
    with ServerThread([asr_model(directory, slots=1)]) as one_slot:
        async with AsrClient(url(one_slot), format="f32le") as first:
            await first.send(noise(2.0, 22))  # then gone, mid-stream, without a flush
        audio = noise(1.5, 23)
        for _ in range(50):  # the server notices the close within a moment
            try:
                messages = await transcribe(url(one_slot), audio, 16000, format="f32le")
                break
            except Exception as exc:  # at_capacity until the first stream's slot is free
                assert "at_capacity" in str(exc)
                await asyncio.sleep(0.05)
    words = [(m["text"], m["start"], m["end"]) for m in messages if m["type"] == "word_end"]
    assert words == clamp(offline_words(model, audio), 1.5)


async def test_a_client_far_faster_than_real_time_loses_nothing_and_its_backlog_stays_bounded(server, tiny):
    _, model = tiny
    audio = noise(12.0, 24)  # six times the server's 2 s buffer, sent as fast as TCP takes it
    messages = await asyncio.wait_for(transcribe(url(server), audio, 16000, chunk_s=0.25, token="s3cret",
                                                 format="f32le"), 60)
    words = [(m["text"], m["start"], m["end"]) for m in messages if m["type"] == "word_end"]
    assert words == clamp(offline_words(model, audio), 12.0)
    steps = [m for m in messages if m["type"] == "step"]
    assert steps[-1]["frames"] == 150 + model.config.flush_frames
    assert max(s["buffered"] for s in steps) <= 2.0  # the server stopped reading at half its buffer


async def test_a_frame_longer_than_the_buffer_is_refused_with_buffer_full_and_1009(server):
    async with connect(url(server), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        await ws.send(json.dumps({"type": "hello", "sample_rate": 16000, "format": "f32le"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(noise(2.5, 25).astype("<f4").tobytes())
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(json.loads(await ws.recv()))
    assert messages[-1]["code"] == "buffer_full" and closed.value.rcvd.code == 1009


async def test_the_asr_endpoints_are_absent_from_a_server_without_a_recogniser():
    with ServerThread([standin(0)]) as plain:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url(plain)):
                pass
    assert refused.value.response.status_code == 404
    assert b"needs a speech recogniser" in refused.value.response.body


def test_serve_loads_the_recogniser_from_asr_path_and_none_with_asr_none(tiny):
    from stream import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    only_asr = ["--llm", "none", "--tts", "none"]  # the other embedded models stay out of this
    loaded = serve.load_models(parser.parse_args([*only_asr, "--asr", str(tiny[0] / "tiny_asr.json"), "--asr-slots", "5"]))
    assert [m.name for m in loaded] == ["standin", "tiny_asr"] and loaded[1].slots == 5
    assert [m.name for m in serve.load_models(parser.parse_args([*only_asr, "--asr", "none"]))] == ["standin"]
