"""Specification of the speech sessions, sans I/O: ``/v1/asr`` and ``/api/asr-streaming`` driven
frame by frame against a real engine and a tiny untrained recogniser, no socket. What a
session hears is the offline decode of its audio, whatever the sizes, rates and formats it
arrives in, and nothing is dropped."""

import asyncio
import json

import numpy as np
import pytest

from models.audio_resample import resample
from stream.asr_session import AsrProtocol, AsrStream, MoshiAsrProtocol
from stream.engine import Engine
from stream.hosts import InProcessHost
from stream import wire
from session_driver import SessionDriver
from tiny_asr import asr_model, noise, offline_words, save_tiny_asr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    directory = tmp_path_factory.mktemp("asr")
    return directory, save_tiny_asr(directory)


async def started(loaded) -> Engine:
    engine = Engine(loaded.name, InProcessHost(loaded.executor_spec), max_batch_size=loaded.max_batch_size,
                    slots=loaded.slots, cost_of=loaded.cost_of)
    engine.loaded = loaded  # the sessions need its AsrAudio
    engine.start()
    await engine.ready()
    return engine


@pytest.fixture
async def engine(tiny):
    engine = await started(asr_model(tiny[0], slots=4))
    yield engine
    await engine.stop()


def hello(rate=16000, fmt="pcm_s16le", **extra) -> str:
    return json.dumps({"type": "hello", "sample_rate": rate, "format": fmt, **extra})


def s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()


def heard_s16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768


def clamp(words, seconds):
    """Offline times past the audio's end lie in the flush's silence: the session reports them
    at the end of the client's audio."""
    return [(t, min(s, round(seconds, 3)), min(e, round(seconds, 3))) for t, s, e in words]


def send_in_pieces(driver, data: bytes, sizes, seed=0) -> None:
    rng = np.random.default_rng(seed)
    at = 0
    while at < len(data):
        n = int(rng.choice(sizes))
        driver.send(data[at: at + n])
        at += n


async def test_frames_of_odd_byte_sizes_are_heard_as_the_offline_decode(tiny, engine):
    directory, model = tiny
    data = s16(noise(3.3, 1))
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello())
    send_in_pieces(driver, data, [1, 3, 7, 333, 1279, 2561, 9999])  # odd sizes split samples across frames
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    audio = heard_s16(data)
    assert driver.out.words() == clamp(offline_words(model, audio), len(audio) / 16000)
    assert len(driver.out.words()) >= 4
    assert driver.out.messages[-1]["type"] == "flushed" and driver.out.closed is None


async def test_each_word_is_sent_when_recognised_and_its_end_after_it_in_order(tiny, engine):
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello())
    driver.send(s16(noise(3.3, 1)))
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    steps = 0  # the frame a message went out with: the steps reported before it
    said = []
    for m in driver.out.messages:
        steps += m["type"] == "step"
        if m["type"] in ("word", "word_end"):
            said.append((steps, m))
    starts = [(m["text"], m["start"]) for _, m in said if m["type"] == "word"]
    ends = [(m["text"], m["start"]) for _, m in said if m["type"] == "word_end"]
    assert len(starts) >= 4 and starts == ends  # every word gets its end, in the same order
    sent_at = [frame for frame, m in said if m["type"] == "word"]
    ended_at = [frame for frame, m in said if m["type"] == "word_end"]
    # Before its end was known: frames earlier, for every word but the last, which the flush may end.
    assert all(s < e for s, e in zip(sent_at[:-1], ended_at[:-1])) and sent_at[-1] <= ended_at[-1]
    assert "end" not in next(m for _, m in said if m["type"] == "word")


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
async def test_audio_at_any_rate_is_heard_as_the_offline_decode_of_its_torchaudio_resample(tiny, engine, rate):
    directory, model = tiny
    audio = noise(2.5, 2, rate)
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello(rate, "f32le"))
    send_in_pieces(driver, audio.astype("<f4").tobytes(), [4, 1000, 3840, 7777], seed=rate)
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    assert driver.out.of_type("ready")[0]["sample_rate"] == rate
    assert driver.out.words() == clamp(offline_words(model, resample(audio, rate, 16000)), len(audio) / rate)
    assert driver.out.of_type("flushed")[0]["audio_s"] == pytest.approx(len(audio) / rate, abs=1e-4)


async def test_flush_sends_the_last_words_then_flushed_and_the_stream_goes_on(tiny, engine):
    directory, model = tiny
    first, second = noise(1.7, 3), noise(2.2, 4)
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello(fmt="f32le"))
    driver.send(first.astype("<f4").tobytes())
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    kinds = [m["type"] for m in driver.out.messages]
    assert kinds[-1] == "flushed"
    assert driver.out.words() == clamp(offline_words(model, first), 1.7)  # every word, before "flushed"
    driver.send(second.astype("<f4").tobytes())
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    assert len(driver.out.of_type("flushed")) == 2
    later = driver.out.words()[len(offline_words(model, first)):]
    assert all(start >= 1.7 - 1e-9 for _, start, _ in later)  # on the client's clock: the flush's silence is not counted


async def test_silence_only_brings_no_end_of_turn_and_a_quiet_step_per_frame(tiny, engine):
    directory, model = tiny
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello())
    driver.send(s16(np.zeros(16000 * 2, np.float32)))
    driver.send(json.dumps({"type": "flush"}))
    await driver.settle()
    steps = driver.out.of_type("step")
    assert [s["frames"] for s in steps] == list(range(1, 25 + model.config.flush_frames + 1))
    assert max(s["vad"] for s in steps) < 0.1 and not driver.out.of_type("end_of_turn")
    assert driver.out.words() == clamp(offline_words(model, np.zeros(32000, np.float32)), 2.0)


async def test_a_pause_after_speech_is_one_end_of_turn_where_the_speech_stopped(tiny, engine):
    from clients.synthesizers import Espeak

    directory, _ = tiny
    said = Espeak().synthesize("go to the red cube".split(), "en", 1.0, 1.0)
    voice = resample(said.audio, said.sample_rate, 16000)
    audio = np.concatenate([np.zeros(4000, np.float32), voice, np.zeros(32000, np.float32)])
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello(end_of_turn_ms=640))
    driver.send(s16(audio))
    await driver.settle()
    turns = driver.out.of_type("end_of_turn")
    speech_end = (4000 + len(voice)) / 16000
    assert len(turns) == 1 and abs(turns[0]["at"] - speech_end) < 0.4
    frame = next(s["frames"] for s in driver.out.of_type("step") if s["frames"] == turns[0]["frames"])
    assert (frame * 0.08) - turns[0]["at"] == pytest.approx(0.64, abs=0.09)


async def test_a_client_far_faster_than_real_time_is_caught_up_in_batches_with_nothing_lost(tiny):
    directory, model = tiny
    engine = await started(asr_model(directory, slots=3, buffer_s=30))
    audios = [noise(6.0, 10 + i) for i in range(3)]
    drivers = [SessionDriver(engine, AsrProtocol(engine.loaded)) for _ in audios]
    for driver, audio in zip(drivers, audios):  # 6 s each, all at once
        driver.send(hello(fmt="f32le"))
        driver.send(audio.astype("<f4").tobytes())
        driver.send(json.dumps({"type": "flush"}))
    await asyncio.gather(*(d.settle() for d in drivers))
    for driver, audio in zip(drivers, audios):
        assert driver.out.words() == clamp(offline_words(model, audio), 6.0)
        assert driver.out.of_type("step")[-1]["frames"] == 75 + model.config.flush_frames
    await engine.stop()


async def test_more_than_the_buffer_at_once_is_refused_with_buffer_full(tiny):
    directory, _ = tiny
    engine = await started(asr_model(directory, slots=1, buffer_s=2.0))
    driver = SessionDriver(engine, AsrProtocol(engine.loaded))
    driver.send(hello(fmt="f32le"))
    assert not driver.protocol.paused
    driver.send(noise(1.5, 5).astype("<f4").tobytes())  # more than half the buffer: reading pauses
    assert driver.protocol.paused
    driver.send(noise(1.0, 6).astype("<f4").tobytes())  # 2.5 s waiting > 2 s
    await driver.settle()
    await engine.stop()
    error = driver.out.of_type("error")[0]
    assert error["code"] == "buffer_full" and driver.out.closed[0] == 1009


async def test_bad_hellos_and_bad_audio_end_the_session_with_a_named_error(tiny, engine):
    directory, _ = tiny
    cases = [(json.dumps({"type": "hello"}), None, "missing_field"),
             (hello(rate=100), None, "bad_type"),
             (hello(fmt="mp3"), None, "bad_type"),
             (hello(channels=2), None, "unsupported"),
             (b"\x00\x01", None, "bad_frame"),
             (hello(fmt="f32le"), np.array([0.1, np.nan], "<f4").tobytes(), "not_finite"),
             (hello(), json.dumps({"type": "flsh"}), "unknown_type")]
    for first, then, code in cases:
        driver = SessionDriver(engine, AsrProtocol(engine.loaded))
        driver.send(first)
        if then is not None:
            driver.send(then)
        assert driver.out.of_type("error")[0]["code"] == code, (first, then)
        assert driver.out.closed[0] == 1008
        driver.close()


async def test_the_moshi_protocol_says_ready_words_end_words_steps_and_the_marker_after_its_audio(tiny, engine):
    directory, model = tiny
    audio24 = noise(2.0, 7, 24000)
    driver = SessionDriver(engine, MoshiAsrProtocol(engine.loaded))
    assert driver.out.messages[0] == {"type": "Ready"}
    for at in range(0, len(audio24), 1920):
        driver.send(wire.packb({"type": "Audio", "pcm": audio24[at: at + 1920].tolist()}))
    driver.send(wire.packb({"type": "Marker", "id": 7}))
    for _ in range(3):
        driver.send(wire.packb({"type": "Audio", "pcm": [0.0] * 24000}))
    await driver.settle()
    kinds = [m["type"] for m in driver.out.messages]
    marker_at = kinds.index("Marker")
    expected = offline_words(model, resample(audio24, 24000, 16000))
    started_words = [m for m in driver.out.messages[:marker_at] if m["type"] == "Word"]
    assert [w["text"] for w in started_words] == [t for t, _, _ in expected]
    assert [w["start_time"] for w in started_words] == [s for _, s, _ in expected]
    assert driver.out.messages[marker_at] == {"type": "Marker", "id": 7}
    steps = driver.out.of_type("Step")
    assert [s["step_idx"] for s in steps] == list(range(1, len(steps) + 1))
    assert all(len(s["prs"]) == 4 for s in steps) and steps[0]["buffered_pcm"] >= 0


async def test_the_moshi_protocol_reports_errors_as_error_messages_then_closes(tiny, engine):
    directory, _ = tiny
    for message, close in (({"type": "OggOpus", "data": b"x"}, 1008), ({"type": "Audio", "pcm": "loud"}, 1008),
                           ({"type": "Nope"}, 1008)):
        driver = SessionDriver(engine, MoshiAsrProtocol(engine.loaded))
        driver.send(wire.packb(message))
        assert driver.out.messages[-1]["type"] == "Error" and driver.out.closed[0] == close
        driver.close()


def test_word_times_skip_the_silence_a_flush_inserted(tiny):
    from stream.registry import AsrAudio

    stream = AsrStream(AsrAudio(16000, 1280, 6, 8), 16000)
    stream.push(np.zeros(2000, np.float32))  # 1.56 frames
    stream.flush()  # pads to 2 frames (560 samples), then 8 frames of silence: 0.035 + 0.64 s inserted at 0.125 s
    assert stream.client_time(0.1) == pytest.approx(0.1)
    assert stream.client_time(0.5) == pytest.approx(0.125)  # inside the inserted silence
    assert stream.client_time(0.125 + 0.675 + 0.3) == pytest.approx(0.425)

