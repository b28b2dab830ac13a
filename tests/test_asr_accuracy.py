"""The shipped recogniser over the wire: Kyutai's client gets the transcript of held-out
sentences from ``/api/asr-streaming``, and ``/v1/asr`` streams what the offline decode of the
same audio says. The audio is made now by espeak-ng (one of the training synthesizers) saying
sentences held out of training. Skipped until the trained checkpoint is shipped."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kyutai_client import SAMPLE_RATE, kyutai_transcribe
from server_harness import ServerThread
from stream import registry
from stream.asr_models import SHIPPED_NAME, shipped_checkpoint_present
from stream.server import ServerConfig


def test_the_recogniser_is_shipped():
    assert shipped_checkpoint_present(), "models/checkpoints/dsm_asr.* is missing (headway train asr writes it)"


@pytest.fixture(scope="module")
def sentences():
    from models.speech_corpus import split_sentences
    from models.world_grammar import sample_sentences

    _, heldout = split_sentences(sample_sentences(3000, seed=0), seed=0)  # the corpus's held-out sentences
    return [s.text for s in heldout[:3]]


def spoken(text: str, rate: int) -> np.ndarray:
    from clients.synthesizers import Espeak
    from models.audio_resample import resample

    said = Espeak().synthesize(text.split(), "en-us", 1.0, 1.0)
    return resample(said.audio, said.sample_rate, rate)


@pytest.fixture(scope="module")
def server(one_torch_thread):
    model = registry.load(SHIPPED_NAME, registry.ModelOptions(asr_slots=4))
    with ServerThread([model], ServerConfig(token="public_token")) as running:
        yield running


def test_kyutais_client_gets_the_transcript_of_held_out_sentences(server, sentences):
    async def run():
        return [await kyutai_transcribe(f"ws://127.0.0.1:{server.port}/api/asr-streaming", "public_token",
                                        spoken(text, SAMPLE_RATE), rtf=20.0) for text in sentences]

    transcripts = asyncio.run(asyncio.wait_for(run(), 120))
    heard = [" ".join(w["text"] for w in t) for t in transcripts]
    exact = sum(h == s for h, s in zip(heard, sentences))
    assert exact >= len(sentences) - 1, list(zip(sentences, heard))
    for transcript in transcripts:
        times = [w["timestamp"] for w in transcript]
        # after the second of silence the client sends first (to the model's 80 ms, less a frame)
        assert all(1.0 - 0.08 <= start <= stop for start, stop in times)
        assert [start for start, _ in times] == sorted(start for start, _ in times)


def test_v1_asr_streams_the_offline_decode_of_real_speech(server, sentences):
    from clients.asr import transcribe
    from models.audio_resample import resample
    from models.dsm_asr import load_dsm_asr

    model = load_dsm_asr()
    audio = np.concatenate([spoken(text, 22050) for text in sentences[:2]])  # espeak's own rate
    messages = asyncio.run(transcribe(f"ws://127.0.0.1:{server.port}/v1/asr", audio, 22050, token="public_token",
                                      format="f32le"))
    words = [(m["text"], m["start"], m["end"]) for m in messages if m["type"] == "word_end"]
    duration = round(len(audio) / 22050, 3)
    offline = [(w.text, min(round(w.start_s, 3), duration), min(round(w.end_s, 3), duration))
               for w in model.offline_decode(resample(audio, 22050, 16000))]
    assert words == offline and len(words) >= 8
