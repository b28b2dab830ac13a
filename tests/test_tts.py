"""Specification of speech synthesis: the codec, the DSM synthesiser's streams and steps, and
the ``/v1/tts`` and ``/api/tts_streaming`` sessions (sans I/O against a real engine on a
virtual clock, and through a real server for the socket-level behaviours), all with a tiny
untrained model: the comparisons compare codes and audio, whatever the weights mean."""

import json

import msgpack
import numpy as np
import pytest
import torch

from models.dsm_streams import BOUNDARY, PAD, TimedWord
from models.dsm_tts import TAIL_FRAMES, TtsRunner, align_tts_streams, synthesize_codes
from models.tts_codec import StreamingGriffinLim, resynthesise
from stream.engine import Engine
from stream.hosts import InProcessHost
from stream.tts_session import LEAD_S, MoshiTtsProtocol, TtsProtocol
from session_driver import SessionDriver
from tiny_tts import save_tiny_tts, tts_model, voice_audio

WORDS = "robot go to the red cube please".split()
OTHER = "now slide left two steps".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    directory = tmp_path_factory.mktemp("tts")
    model, codec = save_tiny_tts(directory)
    return directory, model, codec


async def started(loaded) -> Engine:
    engine = Engine(loaded.name, InProcessHost(loaded.executor_spec), max_batch_size=loaded.max_batch_size,
                    slots=loaded.slots, cost_of=loaded.cost_of)
    engine.start()
    await engine.ready()
    return engine


@pytest.fixture
async def served(tiny):
    loaded = tts_model(tiny[0], slots=3)
    engine = await started(loaded)
    yield loaded, engine
    await engine.stop()


def spoken(model, codec, words):
    """The 16 kHz audio of ``words`` said offline, whole text at once."""
    codes, _ = synthesize_codes(model, words)
    return codes, resynthesise(codec, torch.from_numpy(codes))


# -- codec ------------------------------------------------------------------------------------

def test_the_codec_gives_12_5_codes_a_second_and_1280_samples_back_per_code(tiny):
    _, _, codec = tiny
    audio = voice_audio(1.0, seed=7)
    codes = codec.encode(audio)
    assert codes.shape == (13, codec.config.codebooks)  # 1 s = 12.5 frames, rounded up to whole frames
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.config.codebook_size
    out = resynthesise(codec, codes)
    assert out.shape == (13 * 1280,) and out.dtype == np.float32
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0 and np.abs(out).max() > 0


def test_vocoding_slots_together_gives_each_the_audio_it_gets_alone(tiny):
    _, _, codec = tiny
    mels = [codec.decode_features(codec.encode(voice_audio(0.8, seed=s))) for s in (1, 2)]
    alone = [resynthesise(codec, codec.encode(voice_audio(0.8, seed=s))) for s in (1, 2)]
    c = codec.config
    vocoder = StreamingGriffinLim(3, c.gl_iterations, c.gl_context)
    together = [[], []]
    for t in range(mels[0].shape[0]):
        out = vocoder.step(torch.stack([mels[0][t], mels[1][t]]), torch.tensor([2, 0]))
        together[0].append(out[0])
        together[1].append(out[1])
    for i in range(2):
        np.testing.assert_allclose(torch.cat(together[i]).numpy(), alone[i], atol=1e-5)


# -- the streams --------------------------------------------------------------------------------

def go_left_streams(model, config):
    """The streams of "go left" (boundaries at frames 1 and 4, the end at 8) over 12 frames of
    distinct codes; returns (streams, codes)."""
    words = [TimedWord("go", 0.08, 0.3), TimedWord("left", 0.32, 0.6)]
    codes = np.arange(12 * config.codebooks).reshape(12, config.codebooks) % config.codebook_size
    return align_tts_streams(words, codes, model.tokenizer, config), codes


def test_text_leads_and_codebook_k_of_a_frame_is_written_k_steps_after_codebook_0(tiny):
    _, model, _ = tiny
    c = model.config
    s, codes = go_left_streams(model, c)
    go, left = model.tokenizer.token("go"), model.tokenizer.token("left")
    assert c.hold_word  # the word is read until the next boundary
    assert list(s.text[:9]) == [PAD, BOUNDARY, go, go, BOUNDARY, left, left, left, BOUNDARY]
    assert s.end == 8  # the end boundary where the last word ends
    frames = s.end + TAIL_FRAMES + 1
    for k in range(c.codebooks):
        lag = c.audio_delay + c.delays[k]
        assert (s.audio[:lag, k] == -1).all()
        assert (s.audio[lag: lag + frames, k] == codes[:frames, k]).all()
        assert (s.audio[lag + frames:, k] == -1).all()
    assert list(s.ahead[0]) == [go, left]  # before any word is read: the first two queued
    assert list(s.ahead[2]) == [left, PAD]  # "go" read: "left", then the end of the text
    assert list(s.ahead[5]) == [PAD, PAD]


def test_without_hold_word_a_word_is_read_once_after_its_boundary_as_in_dsm(tiny):
    import dataclasses

    _, model, _ = tiny
    s, _ = go_left_streams(model, dataclasses.replace(model.config, hold_word=False))
    go, left = model.tokenizer.token("go"), model.tokenizer.token("left")
    assert list(s.text[:9]) == [PAD, BOUNDARY, go, PAD, BOUNDARY, left, PAD, PAD, BOUNDARY]


def test_input_noise_changes_only_the_codes_read_back_not_the_targets(tiny):
    _, model, _ = tiny
    s, _ = go_left_streams(model, model.config)
    text, ahead, audio = (torch.from_numpy(a)[None] for a in (s.text, s.ahead, s.audio))
    kept = audio.clone()
    torch.manual_seed(0)
    with torch.no_grad():
        clean = model(text, ahead, audio)[1]
        noisy = model(text, ahead, audio, input_noise=0.5)[1]
    assert torch.equal(audio, kept) and not torch.allclose(clean, noisy)


def test_streams_stepped_together_get_the_codes_each_gets_alone(tiny):
    _, model, _ = tiny
    alone = [synthesize_codes(model, w)[0] for w in (WORDS, OTHER)]
    runner = TtsRunner(model, 3)
    texts = {2: WORDS, 0: OTHER}
    codes = {slot: [] for slot in texts}
    for slot, words in texts.items():
        runner.open(slot)
        for w in words:
            runner.feeders[slot].push(w)
        runner.feeders[slot].end()
    live = set(texts)
    while live:
        rows = sorted(live)
        for slot, result in zip(rows, runner.step(rows)):
            codes[slot].append(result.codes)
            if result.done:
                live.discard(slot)
    np.testing.assert_array_equal(np.concatenate(codes[2]), alone[0])
    np.testing.assert_array_equal(np.concatenate(codes[0]), alone[1])


def test_words_streamed_one_by_one_give_the_codes_of_the_whole_text_at_once(tiny):
    _, model, _ = tiny
    whole, timed = synthesize_codes(model, WORDS)
    runner = TtsRunner(model, 1)
    runner.open(0)
    feeder, waiting, out, words = runner.feeders[0], list(WORDS), [], []
    while True:
        if not feeder.ready():  # a word arrives only when the model has to wait for it
            feeder.push(waiting.pop(0)) if waiting else feeder.end()
            continue
        result = runner.step([0])[0]
        out.append(result.codes)
        words += result.words
        if result.done:
            break
    np.testing.assert_array_equal(np.concatenate(out), whole)
    assert words == timed and [w for w, _ in words] == WORDS


def test_streaming_steps_write_what_the_teacher_forced_forward_predicts(tiny):
    """The step with its KV cache is the training forward, one frame at a time: fed the same
    streams, the forward's argmax is every code the steps wrote."""
    _, model, _ = tiny
    c = model.config
    runner = TtsRunner(model, 1)
    runner.open(0)
    for w in WORDS:
        runner.feeders[0].push(w)
    runner.feeders[0].end()
    texts, aheads, written = [], [], []
    original = model.step

    def recording(slots, text, ahead, active, *rest, **kw):
        out = original(slots, text, ahead, active, *rest, **kw)
        texts.append(int(text[0]))
        aheads.append(ahead[0].tolist())
        written.append(out.audio[0].tolist())
        return out

    model.step = recording
    try:
        while not runner.step([0])[0].done:
            pass
    finally:
        del model.step
    audio = torch.tensor(written)[None]
    with torch.no_grad():
        _, logits = model(torch.tensor(texts)[None], torch.tensor(aheads)[None], audio)
    predicted = logits.argmax(-1)[0]
    valid = audio[0] >= 0
    assert valid.sum() > c.codebooks * 5
    assert torch.equal(predicted[valid], audio[0][valid])


def test_the_stream_says_every_word_in_order_and_drains_after_the_end(tiny):
    _, model, _ = tiny
    codes, timed = synthesize_codes(model, WORDS)
    assert [w for w, _ in timed] == WORDS
    starts = [f for _, f in timed]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert codes.shape[0] > starts[-1]  # audio past the last word's start: the drain


# -- /v1/tts, sans I/O --------------------------------------------------------------------------

def hello(rate=24000, fmt="pcm_f32le") -> str:
    return json.dumps({"type": "hello", "sample_rate": rate, "format": fmt})


async def test_v1_tts_says_ready_words_audio_frames_and_done_then_closes(tiny, served):
    _, model, codec = tiny
    loaded, engine = served
    driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
    driver.send(hello(rate=16000))
    driver.send_json({"type": "text", "text": "Robot, go to the "})
    driver.send_json({"type": "text", "text": "red cube please"})
    driver.send_json({"type": "end"})
    await driver.run()
    out = driver.out
    assert out.messages[0]["type"] == "ready" and out.messages[0]["sample_rate"] == 16000
    assert [m["text"] for m in out.of_type("word")] == WORDS
    assert out.of_type("done")[0]["cancelled"] is False and out.closed[0] == 1000
    pcm = np.frombuffer(b"".join(out.audio), "<f4")
    codes, expected = spoken(model, codec, WORDS)
    assert len(out.audio) == codes.shape[0]  # one binary frame per 80 ms frame
    np.testing.assert_allclose(pcm, expected, atol=1e-5)  # 16 kHz asked: the model's own audio
    driver.close()


async def test_audio_at_another_rate_is_the_torchaudio_resample_of_the_models_audio(tiny, served):
    from models.audio_resample import resample

    _, model, codec = tiny
    loaded, engine = served
    driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
    driver.send(hello(rate=24000))
    driver.send_json({"type": "text", "text": " ".join(OTHER)})
    driver.send_json({"type": "end"})
    await driver.run()
    pcm = np.frombuffer(b"".join(driver.out.audio), "<f4")
    _, expected = spoken(model, codec, OTHER)
    np.testing.assert_allclose(pcm, resample(expected, 16000, 24000), atol=1e-5)
    driver.close()


async def test_audio_is_paced_at_most_the_lead_ahead_of_the_clock(tiny, served):
    loaded, engine = served
    driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
    driver.send(hello())
    driver.send_json({"type": "text", "text": " ".join(WORDS + OTHER)})
    driver.send_json({"type": "end"})
    await driver.run()
    times = [t for t, kind in driver.out.events if kind == "audio"]
    first = times[0]
    for i, t in enumerate(times):  # frame i+1 sent at t: at most LEAD_S + one frame ahead
        assert (i + 1) * 0.08 - (t - first) / 1e9 <= LEAD_S + 0.08 + 1e-9
    assert (times[-1] - first) / 1e9 >= len(times) * 0.08 - LEAD_S - 0.08  # and it did wait
    driver.close()


async def test_cancel_stops_the_audio_at_once_and_frees_the_slot(tiny, tmp_path):
    loaded = tts_model(tiny[0], slots=1)
    engine = await started(loaded)
    try:
        driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
        driver.send(hello())
        driver.send_json({"type": "text", "text": " ".join(WORDS * 3)})
        await driver.run(until=lambda: len(driver.out.audio) >= 3)
        heard = len(driver.out.audio)
        driver.send_json({"type": "cancel"})
        await driver.run()
        assert len(driver.out.audio) == heard  # nothing after the cancel, not even the step in flight
        assert driver.out.of_type("done")[-1]["cancelled"] is True and driver.out.closed[0] == 1000
        driver.close()
        again = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)  # the one slot is free again
        again.send(hello())
        again.send_json({"type": "text", "text": "go left"})
        again.send_json({"type": "end"})
        await again.run()
        assert again.out.of_type("done") and again.out.closed[0] == 1000
        again.close()
    finally:
        await engine.stop()


async def test_unknown_words_are_skipped_and_reported(tiny, served):
    loaded, engine = served
    driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
    driver.send(hello())
    driver.send_json({"type": "text", "text": "go xylophone left"})
    driver.send_json({"type": "end"})
    await driver.run()
    assert [m["text"] for m in driver.out.of_type("word")] == ["go", "left"]
    assert driver.out.of_type("done")[0]["skipped"] == ["xylophone"]
    driver.close()


async def test_bad_messages_end_the_session_with_a_named_error(tiny, served):
    loaded, engine = served
    cases = [([json.dumps({"type": "text", "text": "go"})], "unknown_type"),
             ([hello(rate=123)], "bad_type"),
             ([hello(), json.dumps({"type": "text", "text": 3})], "bad_type"),
             ([hello(), json.dumps({"type": "speak"})], "unknown_type")]
    for frames, code in cases:
        driver = SessionDriver(engine, TtsProtocol(loaded), audio_out=True)
        for f in frames:
            driver.send(f)
        await driver.run()
        assert driver.out.of_type("error")[0]["code"] == code and driver.out.closed[0] == 1008
        driver.close()


# -- /api/tts_streaming, sans I/O ---------------------------------------------------------------

async def test_the_moshi_protocol_sends_ready_audio_at_24_khz_and_word_times_then_closes(tiny, served):
    _, model, codec = tiny
    loaded, engine = served
    driver = SessionDriver(engine, MoshiTtsProtocol(loaded))
    driver.send(msgpack.packb({"type": "Text", "text": " ".join(WORDS)}))
    driver.send(msgpack.packb({"type": "Eos"}))
    await driver.run()
    out = driver.out
    assert out.messages[0] == {"type": "Ready"}
    audio = [m for m in out.messages if m["type"] == "Audio"]
    codes, _ = spoken(model, codec, WORDS)
    assert len(audio) == codes.shape[0]
    assert sum(len(a["pcm"]) for a in audio) == pytest.approx(codes.shape[0] * 1920, abs=2)
    texts = [m for m in out.messages if m["type"] == "Text"]
    assert [t["text"] for t in texts] == WORDS
    assert all(t["start_s"] < t["stop_s"] for t in texts)
    assert out.closed[0] == 1000
    driver.close()


# -- through a real server ----------------------------------------------------------------------

def test_a_moshi_client_gets_the_audio_and_the_server_closes_after_it(tiny):
    """As Kyutai's ``tts_rust_server.py`` does: Text, Eos, read until the server closes."""
    from websockets.sync.client import connect

    from server_harness import ServerThread

    with ServerThread([tts_model(tiny[0], slots=2)]) as server:
        url = server.url.rstrip("/") + "/api/tts_streaming?voice=x&format=PcmMessagePack"
        pcm = []
        with connect(url) as ws:
            ws.send(msgpack.packb({"type": "Text", "text": "go to the red cube"}, use_single_float=True))
            ws.send(msgpack.packb({"type": "Eos"}))
            try:
                while True:
                    message = msgpack.unpackb(ws.recv(timeout=30))
                    if message["type"] == "Audio":
                        pcm.extend(message["pcm"])
            except Exception as exc:  # ConnectionClosedOK: the server ended it
                assert type(exc).__name__ == "ConnectionClosedOK"
        assert len(pcm) > 1920 and all(isinstance(x, float) for x in pcm[:10])


def test_a_client_that_stops_reading_is_closed_and_another_still_gets_all_its_audio(tiny):
    import socket
    import time

    from websockets.sync.client import connect

    from server_harness import ServerThread
    from stream.server import ServerConfig

    config = ServerConfig(send_timeout_s=0.5, socket_send_buffer=4096, write_limit=4096)
    with ServerThread([tts_model(tiny[0], slots=2)], config) as server:
        url = server.url.rstrip("/") + "/v1/tts"
        sock = socket.create_connection((server.url.split("//")[1].split(":")[0], int(server.url.rsplit(":", 1)[1].strip("/"))))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with connect(url, sock=sock) as stuck:  # never reads after this
            stuck.send(json.dumps({"type": "hello", "sample_rate": 48000, "format": "pcm_f32le"}))
            stuck.send(json.dumps({"type": "text", "text": " ".join(WORDS * 8)}))
            with connect(url) as ws:
                ws.send(json.dumps({"type": "hello", "sample_rate": 16000}))
                ws.send(json.dumps({"type": "text", "text": " ".join(WORDS)}))
                ws.send(json.dumps({"type": "end"}))
                frames, done = 0, None
                while done is None:
                    message = ws.recv(timeout=30)
                    if isinstance(message, bytes):
                        frames += 1
                    elif json.loads(message)["type"] == "done":
                        done = json.loads(message)
            assert frames > 0 and done["cancelled"] is False
            for _ in range(200):  # the stuck session is dropped by the slow-consumer watchdog
                if len(server.server.sessions) == 0:
                    break
                time.sleep(0.05)
            assert len(server.server.sessions) == 0


def test_extra_training_sentences_are_new_in_vocabulary_and_never_say_a_held_out_sentence():
    from clients.train_tts import extra_sentences
    from models.world_grammar import normal_text, sample_sentences, says_any

    drawn = [" ".join(s.words) for s in sample_sentences(200, seed=0)]
    train, heldout = drawn[:150], drawn[150:]
    vocabulary = {w for t in drawn for w in t.split()}
    extra = extra_sentences(100, train, heldout, vocabulary)
    held = {normal_text(t) for t in heldout}
    assert len(extra) == len(set(extra)) == 100
    assert not set(extra) & set(drawn)
    assert not any(says_any(t, held) for t in extra)
    assert all(set(t.split()) <= vocabulary for t in extra)
